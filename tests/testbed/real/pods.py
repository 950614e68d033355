"""What a kubelet does for the bed's real components, from the objects `deploy` applied:

- a container's environment with `value`, Secret and ConfigMap references resolved;
- its volumes: Secret/ConfigMap files (with their modes), emptyDirs, and PersistentVolumeClaims
  as directories that live as long as the bound PersistentVolume (so a destroy that keeps the
  PVC keeps the data), all under the bed's slot directory;
- container paths in env values and args mapped to those directories (there is no chroot);
- its own network namespace on the bed's bridge, at the address the node simulator gives the
  pods, so processes listen where Kubernetes would (any address, the container's port);
- cluster DNS: inside the pod's mount namespace /etc/hosts maps <service>[.<ns>[.svc[.cluster.local]]]
  to the Service's endpoint, and /etc/resolv.conf names a recorder that answers every other name
  NXDOMAIN and remembers it (so a test sees any outbound look-up a component makes).
"""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from k3stack.kube import Kube

from ..cluster import KubeBed
from ..local import BedError

MOUNT_WRAPPER = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'


def _decode(data: dict | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def container_of(template: dict, name: str) -> dict:
    for container in template["spec"]["containers"]:
        if container["name"] == name:
            return container
    raise BedError(f"no container {name!r} in the pod template")


def resolve_env(kube: Kube, namespace: str, container: dict) -> dict[str, str]:
    """The container's environment as the kubelet gives it (envFrom first, then env in order)."""
    env: dict[str, str] = {}

    def source(kind: str, name: str) -> dict[str, str]:
        obj = kube.get("v1", kind, name, namespace)
        if obj is None:
            raise BedError(f"{kind} {namespace}/{name} referenced by container {container['name']} does not exist")
        if kind == "Secret":
            return {k: v.decode() for k, v in _decode(obj.get("data")).items()}
        return dict(obj.get("data") or {})

    for ref in container.get("envFrom") or []:
        if "secretRef" in ref:
            env.update(source("Secret", ref["secretRef"]["name"]))
        if "configMapRef" in ref:
            env.update(source("ConfigMap", ref["configMapRef"]["name"]))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        value_from = item.get("valueFrom") or {}
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in value_from:
                ref = value_from[key]
                data = source(kind, ref["name"])
                if ref["key"] not in data:
                    raise BedError(f"{kind} {namespace}/{ref['name']} has no key {ref['key']!r}")
                env[item["name"]] = data[ref["key"]]
    return env


@dataclass
class Volumes:
    """A pod's volumes as local directories; `path()` maps a container path to the local one."""

    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> local directory

    def path(self, container_path: str) -> str:
        for mount in sorted(self.mounts, key=len, reverse=True):
            if container_path == mount or container_path.startswith(mount.rstrip("/") + "/"):
                return str(self.mounts[mount]) + container_path[len(mount.rstrip("/")) :]
        return container_path

    def translate(self, value: str) -> str:
        """A value that names a path under a mount, mapped; anything else as is."""
        return self.path(value) if value.startswith("/") else value


def materialize_volumes(
    kube: Kube, namespace: str, template: dict, container: dict, workdir: Path, volume_root: Path, owner: str
) -> Volumes:
    """Create the container's volumes under `workdir` (emptyDir, Secret, ConfigMap) and
    `volume_root` (PVCs, by the name of the bound PersistentVolume); owned by user `owner`."""
    uid, gid = pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid
    specs = {v["name"]: v for v in template["spec"].get("volumes") or []}
    volumes = Volumes()
    for mount in container.get("volumeMounts") or []:
        spec = specs[mount["name"]]
        if "persistentVolumeClaim" in spec:
            claim = spec["persistentVolumeClaim"]["claimName"]
            local = volume_root / _bound_volume(kube, namespace, claim)
        else:
            local = workdir / "volumes" / mount["name"]
            shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True, exist_ok=True)
        os.chown(local, uid, gid)
        for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
            if key not in spec:
                continue
            ref = spec[key]
            obj = kube.get("v1", kind, ref.get("secretName") or ref.get("name"), namespace) or {}
            data = (
                _decode(obj.get("data"))
                if kind == "Secret"
                else {k: v.encode() for k, v in obj.get("data", {}).items()}
            )
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                target = local / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[item["key"]])
                os.chown(target, uid, gid)
                os.chmod(target, item.get("mode", ref.get("defaultMode", 0o644)))
            os.chmod(local, 0o750)
        volumes.mounts[mount["mountPath"]] = local
    return volumes


def _bound_volume(kube: Kube, namespace: str, claim: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = kube.get("v1", "PersistentVolumeClaim", claim, namespace) or {}
        if name := (obj.get("spec") or {}).get("volumeName"):
            return name
        time.sleep(0.2)
    raise BedError(f"PersistentVolumeClaim {namespace}/{claim} not bound after {timeout:.0f}s")


def hosts_file(kube: Kube, namespaces: list[str], path: Path) -> Path:
    """/etc/hosts for a pod: every Service of `namespaces` → its first ready endpoint (the bed has
    no kube-proxy: a client reaches the pod directly, on the Service's port = the target port)."""
    lines = ["127.0.0.1 localhost"]
    for index, namespace in enumerate(namespaces):
        for endpoints in kube.list("v1", "Endpoints", namespace):
            addresses = [a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or []]
            if not addresses:
                continue
            name = endpoints["metadata"]["name"]
            names = [f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
            lines.append(" ".join([addresses[0], *([name] if index == 0 else []), *names]))
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


class DnsRecorder:
    """A resolver for the pods that knows no name: each query is recorded and answered NXDOMAIN
    at once (the cluster's own names come from /etc/hosts before DNS is asked)."""

    def __init__(self, address: str):
        self.address = address
        self.queries: list[tuple[str, str]] = []  # (asking address, name)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, 53))
        self._thread = threading.Thread(target=self._serve, name="testbed-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._sock.recvfrom(1500)
            except OSError:
                return
            if len(query) < 12:
                continue
            labels, at = [], 12
            while at < len(query) and query[at]:
                labels.append(query[at + 1 : at + 1 + query[at]].decode(errors="replace"))
                at += 1 + query[at]
            self.queries.append((peer[0], ".".join(labels)))
            question = query[12 : at + 5]
            header = query[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0)  # response, NXDOMAIN
            with contextlib.suppress(OSError):
                self._sock.sendto(header + question, peer)

    def names(self, asked_from: str) -> list[str]:
        return [name for address, name in self.queries if address == asked_from]

    def close(self) -> None:
        self._sock.close()


class Process:
    """A long-running component process inside a pod's network and mount namespaces."""

    def __init__(self, name: str, log: Path):
        self.name = name
        self.log = log
        self.popen: subprocess.Popen | None = None

    def start(
        self,
        argv: list[str],
        *,
        netns: str,
        env: dict[str, str],
        hosts: Path,
        resolv: Path,
        cwd: Path,
        user: str | None = None,
        record=None,
    ) -> None:
        wrapper = ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private"]
        wrapper += ["sh", "-c", MOUNT_WRAPPER, "pod", str(hosts), str(resolv)]
        if user:
            group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
            wrapper += ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                wrapper + argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        if record is not None:
            record(self.popen.pid)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 15) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.popen = None

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])


def pod_address(bed: KubeBed, label: str) -> tuple[str, str]:
    """A fresh bed address in a network namespace of its own (a pod's): (netns, ip)."""
    if bed.slot is None:
        raise BedError("the real components need the built-in test bed (unset K3STACK_TEST_KUBECONFIG)")
    ip = bed.slot.allocate_ip()
    netns = bed.slot.add_netns(f"{label}{bed.slot.next_serial()}", [ip])
    return netns, str(ip)


def wait_until(probe, what: str, process: Process, timeout: float) -> float:
    """Poll `probe()` until true; fail with the process's last log lines. Returns the seconds taken."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not process.running:
            raise BedError(f"{what}: {process.name} exited: {process.tail()}")
        with contextlib.suppress(OSError):
            if probe():
                return time.monotonic() - started
        time.sleep(0.2)
    raise BedError(f"{what}: not ready after {timeout:.0f}s: {process.tail()}")
