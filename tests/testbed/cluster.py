"""The `kube` test bed: a real control plane, K3s's add-ons, a simulated node, and a network
namespace whose addresses pods get, so that the API server's service proxy reaches real sockets."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client, config

from .kube import ControlPlane, build_binaries, cached_binaries
from .local import BedError, run
from .netns import listening_socket
from .nodesim import NodeSimulator
from .slot import Slot

ADDONS = Path(__file__).with_name("k3s-addons.yaml")
IDLE_POD_ADDRESSES = 8


def api_client(kubeconfig: Path | str) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def apply_addons(api: client.ApiClient, timeout: float = 30) -> None:
    """Create the StorageClass and CRDs of k3s-addons.yaml and wait until the CRDs are served."""
    extensions = client.ApiextensionsV1Api(api)
    storage = client.StorageV1Api(api)
    for doc in yaml.safe_load_all(ADDONS.read_text()):
        create = {
            "StorageClass": storage.create_storage_class,
            "CustomResourceDefinition": extensions.create_custom_resource_definition,
        }[doc["kind"]]
        try:
            create(doc, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + timeout
    pending = {
        d["metadata"]["name"] for d in yaml.safe_load_all(ADDONS.read_text()) if d["kind"] == "CustomResourceDefinition"
    }
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            crd = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
            if any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            ):
                pending.discard(name)
        time.sleep(0.1)
    if pending:
        raise BedError(f"CRDs not established after {timeout:.0f}s: {', '.join(sorted(pending))}")


@dataclass
class KubeBed:
    """What the `kube` fixture hands a test.

    `kubeconfig` is an admin kubeconfig. `sim` and `serve_behind_pods` exist only on the
    built-in bed (None / unsupported with K3STACK_TEST_KUBECONFIG)."""

    kubeconfig: Path
    version: str
    sim: NodeSimulator | None = None
    slot: Slot | None = None
    pods_netns: str | None = None
    _plane: ControlPlane | None = None
    _sockets: list[socket.socket] = field(default_factory=list)

    def api(self) -> client.ApiClient:
        return api_client(self.kubeconfig)

    @classmethod
    def start(cls, slot: Slot) -> KubeBed:
        bin_dir = cached_binaries() or build_binaries()
        plane = ControlPlane.start(slot, bin_dir)
        idle = [slot.allocate_ip() for _ in range(IDLE_POD_ADDRESSES)]
        pods_netns = slot.add_netns("pods", idle)
        api = api_client(plane.kubeconfig)
        apply_addons(api)
        sim = NodeSimulator(api, node_ip=str(idle[0]), pod_ips=[str(ip) for ip in idle])
        sim.start()
        return cls(
            kubeconfig=plane.kubeconfig, version=plane.version, sim=sim, slot=slot, pods_netns=pods_netns, _plane=plane
        )

    @classmethod
    def external(cls, kubeconfig: str) -> KubeBed:
        version = client.VersionApi(api_client(kubeconfig)).get_code().git_version
        return cls(kubeconfig=Path(kubeconfig), version=version)

    def serve_behind_pods(self, namespace: str, labels: dict[str, str], port: int) -> socket.socket:
        """A listening socket at a fresh bed address; pods in `namespace` with `labels` get that
        address as their pod IP, so a Service selecting them proxies to the returned socket."""
        if self.sim is None or self.slot is None or self.pods_netns is None:
            raise BedError("serve_behind_pods needs the built-in test bed (unset K3STACK_TEST_KUBECONFIG)")
        ip = str(self.slot.allocate_ip())

        run(["ip", "-n", self.pods_netns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        sock = listening_socket(self.pods_netns, ip, port)
        self._sockets.append(sock)
        self.sim.route(namespace, labels, ip)
        return sock

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig for `user`, who has no RBAC rights at all (for testing 403 handling)."""
        if self._plane is None:
            raise BedError("kubeconfig_for needs the built-in test bed (unset K3STACK_TEST_KUBECONFIG)")
        from .kube import write_kubeconfig

        cert, key = self._plane.pki.issue(f"user-{user}", user)
        return write_kubeconfig(
            self._plane.directory / f"{user}.kubeconfig", self._plane.server, self._plane.pki.ca_cert, cert, key
        )

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        for sock in self._sockets:
            sock.close()
