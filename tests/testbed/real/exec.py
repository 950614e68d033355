"""`exec` into the real stack's pods (the handler of tests/testbed/kubelet.py): a command for container
C of pod P runs where the bed runs C's process — its network and mount namespace (the pod's
/etc/hosts and resolver), its user, its environment as the kubelet resolves it (Secret and
ConfigMap references included), container paths in argv and env mapped to the pod's volumes
(there is no chroot, as for the components themselves: pods.py), and the image's PATH: Debian's
PostgreSQL 15 tools for the postgres container, Open WebUI's venv for its own."""

from __future__ import annotations

import contextlib
import grp
import pwd
import socket
import subprocess
from collections.abc import Iterator

from ..kubelet import ExecRefused, Kubelet
from ..netns import listening_socket
from . import PG_BIN, webui_venv
from .components import BASE_PATH, Component
from .pods import MOUNT_WRAPPER, Volumes, container_of, resolve_env
from .stack import RealStack


def volume_paths(component: Component, template: dict, container: dict) -> Volumes:
    """Where the running process's volumes are (what materialize_volumes made for it), without
    re-creating them: an exec must not empty the emptyDir that holds PostgreSQL's socket."""
    specs = {v["name"]: v for v in template["spec"].get("volumes") or []}
    volumes = Volumes()
    for mount in container.get("volumeMounts") or []:
        spec = specs[mount["name"]]
        if "persistentVolumeClaim" in spec:
            claim = component.kube.get(
                "v1", "PersistentVolumeClaim", spec["persistentVolumeClaim"]["claimName"], component.namespace
            )
            local = component.volume_root / claim["spec"]["volumeName"]
        else:
            local = component.workdir / "volumes" / mount["name"]
        volumes.mounts[mount["mountPath"]] = local
    return volumes


IMAGE_PATH = {"postgres": lambda: f"{PG_BIN}:{BASE_PATH}", "open-webui": lambda: f"{webui_venv() / 'bin'}:{BASE_PATH}"}


class StackExec:
    """handler(namespace, pod, container, argv) for the bed's kubelet, over a RealStack."""

    def __init__(self, stack: RealStack):
        self.stack = stack

    def component(self, namespace: str, pod: str, container: str) -> Component:
        obj = self.stack.kube.get("v1", "Pod", pod, namespace)
        if obj is None:
            raise ExecRefused(f'pods "{pod}" not found')
        labels = obj["metadata"].get("labels") or {}
        for component in self.stack.components.values():
            if (
                component.namespace == namespace
                and component.labels
                and all(labels.get(k) == v for k, v in component.labels.items())
            ):
                if container != component.name:
                    raise ExecRefused(f"container {container} is not valid for pod {pod}")
                if not component.process.running or component.template is None:
                    raise ExecRefused(f"container {container} of pod {pod} is not running")
                return component
        raise ExecRefused(f"pod {pod} runs no process in the bed (only the stack's real components do)")

    def __call__(self, namespace: str, pod: str, container: str, argv: list[str]) -> subprocess.Popen:
        if not argv:
            raise ExecRefused("you must specify at least one command for the container")
        component = self.component(namespace, pod, container)
        template = component.template
        assert template is not None
        spec = container_of(template, container)
        volumes = volume_paths(component, template, spec)
        env = {k: volumes.translate(v) for k, v in resolve_env(component.kube, namespace, spec).items()}
        env = {
            "PATH": IMAGE_PATH.get(container, lambda: BASE_PATH)(),
            "LANG": "C.UTF-8",
            "HOME": str(component.workdir),
            **env,
        }
        wrapper = ["ip", "netns", "exec", component.netns, "unshare", "--mount", "--propagation", "private"]
        wrapper += ["sh", "-c", MOUNT_WRAPPER, "pod", str(component.workdir / "hosts"), str(self.stack.resolv)]
        if component.user != "root":
            group = grp.getgrgid(pwd.getpwnam(component.user).pw_gid).gr_name
            wrapper += ["setpriv", f"--reuid={component.user}", f"--regid={group}", "--init-groups", "--"]
        return subprocess.Popen(
            wrapper + [volumes.translate(a) for a in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=component.workdir,
            start_new_session=True,
        )


@contextlib.contextmanager
def exec_enabled(stack: RealStack, protocols=None) -> Iterator[Kubelet]:
    """The bed's node serves pods/exec for the real stack while the block runs."""
    bed = stack.bed
    assert bed.sim is not None
    assert bed.pods_netns is not None
    sock: socket.socket = listening_socket(bed.pods_netns, bed.sim.node_ip, 0)
    options = {"protocols": protocols} if protocols else {}
    kubelet = Kubelet(bed.api(), bed.sim.node, sock, StackExec(stack), **options).start()
    try:
        yield kubelet
    finally:
        kubelet.close()
