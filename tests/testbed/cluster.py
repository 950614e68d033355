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
from .rest import call
from .slot import Slot

ADDONS = Path(__file__).with_name("k3s-addons.yaml")
IDLE_POD_ADDRESSES = 8


def api_client(kubeconfig: Path | str) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


VARIANT = "testbed.k3stack.dev/variant"
HELM_CONTROLLERS = ("v0.11", "v0.12", "v0.17")
DEFAULT_HELM_CONTROLLER = "v0.17"
DEFAULT_TRAEFIK: tuple[str, ...] = ("traefik.io",)


def addon_documents(helm_controller: str = DEFAULT_HELM_CONTROLLER, traefik: tuple[str, ...] = DEFAULT_TRAEFIK):
    """k3s-addons.yaml's documents for one K3s: the common ones, the HelmChart CRD of
    `helm_controller`, and the Middleware CRD of each group in `traefik` (empty: Traefik disabled)."""
    if helm_controller not in HELM_CONTROLLERS:
        raise BedError(f"unknown helm-controller {helm_controller}; the bed has {', '.join(HELM_CONTROLLERS)}")
    chosen = []
    for doc in yaml.safe_load_all(ADDONS.read_text()):
        variant = (doc["metadata"].get("annotations") or {}).get(VARIANT)
        if variant is None or variant == f"helm-controller-{helm_controller}" or variant in traefik:
            chosen.append(doc)
    return chosen


def apply_addons(
    api: client.ApiClient,
    timeout: float = 30,
    *,
    helm_controller: str = DEFAULT_HELM_CONTROLLER,
    traefik: tuple[str, ...] = DEFAULT_TRAEFIK,
) -> None:
    """Make the cluster serve the add-ons of one K3s: create (or replace in place) the
    StorageClass and CRDs of k3s-addons.yaml for `helm_controller` and the Traefik groups in
    `traefik`, delete Middleware CRDs of other groups, and wait until the API serves exactly that."""
    extensions = client.ApiextensionsV1Api(api)
    storage = client.StorageV1Api(api)
    documents = addon_documents(helm_controller, traefik)
    for doc in documents:
        if doc["kind"] == "StorageClass":
            try:
                storage.create_storage_class(doc, _preload_content=False)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
            continue
        name = doc["metadata"]["name"]
        try:
            extensions.create_custom_resource_definition(doc, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            live = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
            variant = (doc["metadata"].get("annotations") or {}).get(VARIANT)
            if (live["metadata"].get("annotations") or {}).get(VARIANT) != variant:
                # Another helm-controller's CRD: replaced in place, so existing HelmCharts stay.
                live["metadata"]["annotations"] = doc["metadata"].get("annotations") or {}
                live["spec"] = doc["spec"]
                extensions.replace_custom_resource_definition(name, live, _preload_content=False)
    wanted_groups = set(traefik)
    for group in ("traefik.io", "traefik.containo.us"):
        if group not in wanted_groups:
            try:
                extensions.delete_custom_resource_definition(f"middlewares.{group}", _preload_content=False)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
    deadline = time.monotonic() + timeout
    pending = {d["metadata"]["name"] for d in documents if d["kind"] == "CustomResourceDefinition"}
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
    _wait_served(api, helm_controller, wanted_groups, deadline, timeout)


def _wait_served(api: client.ApiClient, helm_controller: str, groups: set[str], deadline: float, timeout: float):
    """Until discovery lists exactly the wanted Traefik groups and the HelmChart handler serves the
    chosen CRD (a status subresource only on v0.17: a dry-run create keeps status only without one)."""
    probe = {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": "testbed-probe", "namespace": "default"},
        "spec": {"chart": "probe"},
        "status": {"jobName": "probe"},
    }
    path = "/apis/helm.cattle.io/v1/namespaces/default/helmcharts"
    state = ""
    while time.monotonic() < deadline:
        _, listing = call(api, "GET", "/apis")
        served = {g["name"] for g in listing.get("groups") or []} & {"traefik.io", "traefik.containo.us"}
        status, created = call(api, "POST", path, probe, [("dryRun", "All")])
        keeps_status = bool((created.get("status") or {}).get("jobName"))
        state = f"Traefik groups served {sorted(served)}, HelmChart create -> {status}, status kept: {keeps_status}"
        if served == groups and status == 201 and keeps_status == (helm_controller != "v0.17"):
            return
        time.sleep(0.2)
    raise BedError(f"the API does not serve the chosen add-ons after {timeout:.0f}s: {state}")


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

    def use_k3s(
        self, *, helm_controller: str = DEFAULT_HELM_CONTROLLER, traefik: tuple[str, ...] = DEFAULT_TRAEFIK
    ) -> None:
        """Serve the API of another K3s: the HelmChart CRD of `helm_controller` (v0.11, v0.12,
        v0.17), Traefik's Middleware under the groups in `traefik` (none: Traefik disabled), and a
        simulated helm-controller that behaves like that version."""
        if self.sim is None:
            raise BedError("use_k3s needs the built-in test bed (unset K3STACK_TEST_KUBECONFIG)")
        apply_addons(self.api(), 60, helm_controller=helm_controller, traefik=traefik)
        self.sim.helm_controller = helm_controller

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
