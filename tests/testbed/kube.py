"""A real Kubernetes control plane on 127.0.0.1: etcd + kube-apiserver + kube-controller-manager
+ kube-scheduler, built from Debian's `kubernetes` source package (build-kube.sh), with a fresh
PKI per run. Pods and PVCs are brought to life by the node simulator (nodesim.py)."""

from __future__ import annotations

import os
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from .local import BedError, have, run, start
from .pki import Pki
from .slot import Slot

HERE = Path(__file__).parent
CACHE = Path(os.environ.get("K3STACK_TESTBED_CACHE", Path.home() / ".cache" / "k3stack-testbed"))
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.0.0.0/24"


def cached_binaries() -> Path | None:
    """The newest cached build whose three binaries are all present."""
    for bin_dir in sorted(CACHE.glob("*/bin"), reverse=True):
        if all((bin_dir / c).is_file() for c in COMPONENTS):
            return bin_dir
    return None


def build_binaries() -> Path:
    """Build (or find cached) control-plane binaries; minutes cold, a second warm."""
    missing = [
        p
        for p in ("go" if have("go") else "/usr/lib/go-1.19/bin/go", "dpkg-source", "rsync")
        if not have(p) and not Path(p).exists()
    ]
    if missing:
        raise BedError(f"cannot build kube-apiserver: {', '.join(missing)} missing (fix: inv setup, as root)")
    run(["bash", str(HERE / "build-kube.sh")])
    found = cached_binaries()
    if not found:
        raise BedError(f"build-kube.sh finished but left no binaries under {CACHE}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, name: str = "testbed") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class ControlPlane:
    """A running control plane; `kubeconfig` is an admin (system:masters) kubeconfig."""

    slot: Slot
    directory: Path
    server: str
    kubeconfig: Path
    pki: Pki
    version: str

    @classmethod
    def start(cls, slot: Slot, bin_dir: Path) -> ControlPlane:
        directory = slot.path / "kube"
        directory.mkdir()
        pki = Pki(directory / "pki")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            ips=("127.0.0.1", "10.0.0.1"),
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        )
        kubeconfigs = {}
        for name, cn, org in (
            ("admin", "k3stack-testbed-admin", "system:masters"),
            ("controller-manager", "system:kube-controller-manager", None),
            ("scheduler", "system:kube-scheduler", None),
        ):
            cert, key = pki.issue(name, cn, organization=org)
            kubeconfigs[name] = write_kubeconfig(directory / f"{name}.kubeconfig", server, pki.ca_cert, cert, key)

        def launch(name: str, argv: list[str]) -> None:
            process = start(argv, log_path=str(directory / f"{name}.log"))
            slot.record_process(process.pid)

        launch(
            "etcd",
            [
                "etcd",
                "--name=testbed",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=testbed=http://127.0.0.1:{peer_port}",
                "--logger=zap",
                "--log-level=warn",
            ],
        )
        slot.ensure_bridge()
        launch(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--insecure-port=0",
                # The advertised address must be a real interface; the bed's bridge is one.
                f"--advertise-address={slot.gateway}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--client-ca-file={pki.ca_cert}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        plane = cls(slot, directory, server, kubeconfigs["admin"], pki, version="")
        plane._wait_ready(admin_cert=pki.dir / "admin.crt", admin_key=pki.dir / "admin.key")
        launch(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfigs['controller-manager']}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                # Each controller acts as its own service account, as on kubeadm/K3s clusters.
                "--use-service-account-credentials=true",
                # A Node without a heartbeat for 40 s would be tainted; the simulator renews its
                # Lease, this only keeps a slow CI machine from flapping.
                "--node-monitor-grace-period=2m",
            ],
        )
        launch(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfigs['scheduler']}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
            ],
        )
        return plane

    def _wait_ready(self, admin_cert: Path, admin_key: Path, timeout: float = 60) -> None:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(admin_cert), str(admin_key))
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=2) as reply:
                    if reply.status == 200:
                        with urllib.request.urlopen(f"{self.server}/version", context=context, timeout=2) as v:
                            self.version = yaml.safe_load(v.read())["gitVersion"]
                        return
            except OSError as exc:  # URLError, connection refused, TLS not up yet, 500 while starting
                last = str(exc)
            time.sleep(0.2)
        log = (self.directory / "kube-apiserver.log").read_text(errors="replace").splitlines()[-5:]
        raise BedError(f"kube-apiserver not ready after {timeout:.0f}s ({last}); log tail: {' | '.join(log)}")
