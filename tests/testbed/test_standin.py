"""The K3s stand-in on the ssh bed: installer, systemctl shim, a real API server behind the host's IP,
joins, token errors and uninstall -- checked from this machine with the official client."""

from __future__ import annotations

import base64
import hashlib
import shlex
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from kubernetes import client, config

from tests.prereqs import unavailable

from . import standin
from .hosts import SshHost
from .kube import cached_binaries
from .local import run

VERSION = "v1.35.8+k3s1"
MANIFEST = """apiVersion: v1
kind: ConfigMap
metadata:
  name: placed-before-start
  namespace: default
data:
  answer: "42"
"""
BROKEN = """apiVersion: v1
kind: ConfigMap
metadata:
  name: broken
  namespace: default
data:
  answer: [not, a, string]
"""
HELM_CHART_CONFIG = """apiVersion: helm.cattle.io/v1
kind: HelmChartConfig
metadata:
  name: traefik
  namespace: kube-system
spec:
  valuesContent: |-
{values}
"""


@pytest.fixture(autouse=True)
def _binaries():
    if cached_binaries() is None:
        unavailable("no cached kube-apiserver build yet (tests/testbed/build-kube.sh)")


def wait_for(check: Callable[[], object], what: str, timeout: float = 60, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - not there yet; keep the last reason for the message
            result, last = None, exc
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")


def install(host: SshHost, env: dict[str, str]) -> str:
    script = standin.installer_script()
    encoded = base64.b64encode(script).decode()
    host.exec(f"printf '%s' {shlex.quote(encoded)} | base64 -d > /tmp/install.sh")
    assert host.exec("sha256sum /tmp/install.sh").split()[0] == hashlib.sha256(script).hexdigest()
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return host.exec(f"env {assignments} sh /tmp/install.sh 2>&1")


def api_for(host: SshHost) -> client.ApiClient:
    """The host's k3s.yaml, read on the host, with its server rewritten to the host's IP."""
    kubeconfig = yaml.safe_load(host.exec("cat /etc/rancher/k3s/k3s.yaml"))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{host.ip}:6443"
    return config.new_client_from_config_dict(kubeconfig)


def ready_api(host: SshHost, timeout: float = 60) -> client.ApiClient:
    def probe():
        api = api_for(host)
        client.VersionApi(api).get_code()
        return api

    return wait_for(probe, f"the API server on {host.name}", timeout)


def ready_nodes(api: client.ApiClient) -> dict[str, client.V1Node]:
    nodes = client.CoreV1Api(api).list_node().items
    return {
        n.metadata.name: n
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    }


def served_sans(host: SshHost) -> list[str]:
    pem = ssl.get_server_certificate((host.ip, 6443))
    cert = x509.load_pem_x509_certificate(pem.encode())
    return [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def unit_log(host: SshHost, unit: str) -> str:
    return host.exec(f"cat /var/log/{unit}.log 2>/dev/null || true")


def upper_files(bed_slot, host: SshHost) -> set[str]:
    """Files the host wrote into its copy-on-write root (not directories: copy-ups of existing
    ones stay), outside /var/log (unit logs outlive an uninstall, as the journal does)."""
    upper = bed_slot.path / "hosts" / host.name / "fs" / "upper"
    # The upper dir is on a tmpfs mounted in the host's mount namespace only. Enter that namespace
    # through the launcher (unshare, in that namespace with our own root), taking its root too
    # (-r): sshd's root is the overlay, and a bare -m lands at the namespace's real / — outside
    # the root we run in when that is a chroot, where the slot's path does not exist.
    listing = run(["nsenter", "-t", str(host.launcher_pid), "-m", "-r", "find", str(upper), "-mindepth", "1"])
    entries = {line[len(str(upper)) + 1 :] for line in listing.splitlines()}
    return {e for e in entries if not e.startswith("var/log") and not Path("/", e).is_dir()}


def test_single_server_install_restart_token_and_uninstall(ssh_hosts, bed_slot):
    (host,) = ssh_hosts(1)
    standin.prepare_host(host)
    assert standin.installer_script() == standin.installer_script()  # stable bytes: pinnable sha256
    before = upper_files(bed_slot, host)

    host.exec(
        "mkdir -p /var/lib/rancher/k3s/server/manifests /etc/rancher/k3s"
        f" && printf '%s' {shlex.quote(MANIFEST)} > /var/lib/rancher/k3s/server/manifests/placed.yaml"
        f" && printf '%s' {shlex.quote(BROKEN)} > /var/lib/rancher/k3s/server/manifests/broken.yaml"
        f" && printf '%s' {shlex.quote(MANIFEST)} > /var/lib/rancher/k3s/server/manifests/Not_RFC1123.yaml"
        " && printf 'node-label:\\n- tier=edge\\ntls-san:\\n- k3s.example.test\\n' > /etc/rancher/k3s/config.yaml"
    )
    env = {
        "INSTALL_K3S_VERSION": VERSION,
        "INSTALL_K3S_EXEC": "server --cluster-init",
        "INSTALL_K3S_SKIP_START": "true",
        "K3S_TOKEN": "first-secret",
    }
    install(host, env)
    assert host.exec("k3s --version").splitlines()[0] == f"k3s version {VERSION} (standin)"
    assert host.exec("readlink /usr/local/bin/kubectl /usr/local/bin/crictl /usr/local/bin/ctr").split() == ["k3s"] * 3
    assert "ExecStart=/usr/local/bin/k3s server --cluster-init\n" in host.exec("cat /etc/systemd/system/k3s.service")
    assert host.exec("stat -c %a /etc/systemd/system/k3s.service.env").strip() == "600"
    assert "K3S_TOKEN='first-secret'" in host.exec("cat /etc/systemd/system/k3s.service.env")
    assert host.exec("systemctl is-enabled k3s").strip() == "enabled"
    assert host.exec("test -x /usr/local/bin/k3s-uninstall.sh && systemctl is-active k3s || true").strip() == "inactive"
    assert standin.restarts(host, "k3s") == 0  # INSTALL_K3S_SKIP_START

    started = time.monotonic()
    host.exec("systemctl restart k3s")
    api = ready_api(host)
    api_seconds = time.monotonic() - started
    nodes = wait_for(lambda: ready_nodes(api), "the server's node to be Ready")
    print(
        f"stand-in server: API answering after {api_seconds:.1f}s, node Ready after {time.monotonic() - started:.1f}s"
    )
    node = nodes[host.name]
    assert node.metadata.labels["tier"] == "edge"
    for role in ("control-plane", "master", "etcd"):
        assert node.metadata.labels[f"node-role.kubernetes.io/{role}"] == "true"
    assert host.exec("stat -c %a /etc/rancher/k3s/k3s.yaml /var/lib/rancher/k3s/server/token").split() == ["600"] * 2
    kubeconfig = yaml.safe_load(host.exec("cat /etc/rancher/k3s/k3s.yaml"))
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert [c["name"] for c in kubeconfig["contexts"]] == ["default"]
    assert kubeconfig["current-context"] == "default"
    token = host.exec("cat /var/lib/rancher/k3s/server/token").strip()
    assert token.startswith("K10")
    assert token.endswith("::server:first-secret")
    assert {"k3s.example.test", host.ip, "127.0.0.1", "10.43.0.1", "kubernetes.default.svc"} <= set(served_sans(host))

    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    assert wait_for(lambda: core.read_namespaced_config_map("placed-before-start", "default"), "manifest").data == {
        "answer": "42"
    }
    wait_for(
        lambda: (
            "Failed to process config: failed to process /var/lib/rancher/k3s/server/manifests/broken.yaml"
            in unit_log(host, "k3s")
        ),
        "the broken manifest's error in the unit log",
    )
    assert 'Addon.k3s.cattle.io \\"Not_RFC1123\\" is invalid' in unit_log(host, "k3s")
    job = wait_for(
        lambda: (j := batch.read_namespaced_job("helm-install-traefik", "kube-system")).status.succeeded and j,
        "helm-install-traefik to complete",
    )
    assert job.status.succeeded == 1
    assert standin.restarts(host, "k3s") == 1

    # A HelmChartConfig re-runs the install; Traefik v2 keys on the v3 chart make it crash-loop.
    def config(values: str) -> None:
        doc = HELM_CHART_CONFIG.format(values="\n".join("    " + line for line in values.splitlines()))
        host.exec(f"printf '%s' {shlex.quote(doc)} > /var/lib/rancher/k3s/server/manifests/traefik-config.yaml")

    def install_job(predicate):
        def check():
            job = batch.read_namespaced_job("helm-install-traefik", "kube-system")
            return predicate(job) and job

        return check

    first_hash = job.metadata.annotations["helmcharts.helm.cattle.io/configHash"]
    config("ports:\n  web:\n    redirectTo:\n      port: websecure")
    broken = wait_for(
        install_job(lambda j: "testbed.k3stack.dev/helm-error" in (j.metadata.annotations or {})), "a failing job"
    )
    assert "redirectTo is not allowed" in broken.metadata.annotations["testbed.k3stack.dev/helm-error"]

    def crash_looping():
        pods = core.list_namespaced_pod("kube-system", label_selector="job-name=helm-install-traefik").items
        return any(
            s.state.waiting and s.state.waiting.reason == "CrashLoopBackOff"
            for p in pods
            for s in p.status.container_statuses or []
        )

    wait_for(crash_looping, "helm-install-traefik to crash-loop")
    config("ports:\n  web:\n    redirections:\n      entryPoint:\n        to: websecure")
    fixed = wait_for(install_job(lambda j: j.status.succeeded), "the fixed install to complete")
    assert fixed.metadata.annotations["helmcharts.helm.cattle.io/configHash"] != first_hash

    # Same environment again, without SKIP_START: nothing changed, so no restart (like the real one).
    output = install(host, {k: v for k, v in env.items() if k != "INSTALL_K3S_SKIP_START"})
    assert "No change detected so skipping service start" in output
    assert standin.restarts(host, "k3s") == 1

    # A tls-san added later is NOT added to the kept serving cert until dynamic-cert.json goes.
    host.exec(
        "mkdir -p /etc/rancher/k3s/config.yaml.d"
        " && echo 'tls-san: [later.example.test]' > /etc/rancher/k3s/config.yaml.d/50-san.yaml"
    )
    restarted = time.monotonic()
    host.exec("systemctl restart k3s")
    ready_api(host)
    print(f"stand-in server: restart to API answering {time.monotonic() - restarted:.1f}s")
    assert "later.example.test" not in served_sans(host)
    host.exec("rm /var/lib/rancher/k3s/server/tls/dynamic-cert.json && systemctl restart k3s")
    ready_api(host)
    assert "later.example.test" in served_sans(host)
    assert standin.restarts(host, "k3s") == 3

    # A different token on restart: K3s refuses its bootstrap data and the unit fails.
    host.exec("echo 'token: another-secret' > /etc/rancher/k3s/config.yaml.d/60-token.yaml")
    host.exec("sed -i /K3S_TOKEN/d /etc/systemd/system/k3s.service.env && systemctl restart k3s")
    wait_for(lambda: host.exec("systemctl is-active k3s || true").strip() == "failed", "k3s to fail")
    assert "bootstrap data already found and encrypted with different token" in unit_log(host, "k3s")

    host.exec("k3s-uninstall.sh >/dev/null 2>&1")
    assert host.exec("pgrep -f '[e]tcd|[k]ube-apiserver|[s]tandin.k3s' || true").strip() == ""
    assert upper_files(bed_slot, host) == before


def test_three_hosts_server_agent_and_joining_server(ssh_hosts, bed_slot):
    first, worker, second = ssh_hosts(3)
    for host in (first, worker, second):
        standin.prepare_host(host)
    before = upper_files(bed_slot, worker)
    token = "cluster-secret"
    common = {"INSTALL_K3S_VERSION": VERSION, "INSTALL_K3S_SKIP_START": "true", "K3S_TOKEN": token}
    url = f"https://{first.ip}:6443"
    install(first, {**common, "INSTALL_K3S_EXEC": "server --cluster-init --disable traefik"})
    install(worker, {**common, "K3S_URL": url})
    second.exec(
        "mkdir -p /etc/rancher/k3s"
        f" && printf 'server: %s\\nwrite-kubeconfig-mode: 0644\\ndisable: [traefik]\\n' {url}"
        " > /etc/rancher/k3s/config.yaml"
    )
    install(second, {**common, "INSTALL_K3S_EXEC": "server"})
    assert worker.exec("test -x /usr/local/bin/k3s-agent-uninstall.sh && echo ok").strip() == "ok"
    assert "ExecStart=/usr/local/bin/k3s agent\n" in worker.exec("cat /etc/systemd/system/k3s-agent.service")
    assert f"K3S_URL='{url}'" in worker.exec("cat /etc/systemd/system/k3s-agent.service.env")

    started = time.monotonic()
    for host, unit in ((first, "k3s"), (worker, "k3s-agent"), (second, "k3s")):
        host.exec(f"systemctl restart {unit}")  # joiners wait for the first server, as K3s does
    api = ready_api(first)
    names = {first.name, worker.name, second.name}
    nodes = wait_for(lambda: names <= set(ready_nodes(api)) and ready_nodes(api), "3 Ready nodes", timeout=90)
    print(f"stand-in cluster: 3 nodes Ready {time.monotonic() - started:.1f}s after the restarts")
    assert nodes[second.name].metadata.labels["node-role.kubernetes.io/etcd"] == "true"
    assert second.exec("stat -c %a /etc/rancher/k3s/k3s.yaml").strip() == "644"
    assert "node-role.kubernetes.io/control-plane" not in nodes[worker.name].metadata.labels
    assert not client.CustomObjectsApi(api).list_namespaced_custom_object(
        "helm.cattle.io", "v1", "kube-system", "helmcharts"
    )["items"]  # --disable traefik
    # The joining server serves the same cluster.
    assert names <= set(ready_nodes(ready_api(second)))

    # The agent with a wrong token: the changed env file makes the installer restart it; it fails.
    install(worker, {**common, "K3S_URL": url, "K3S_TOKEN": "wrong", "INSTALL_K3S_SKIP_START": "false"})
    wait_for(lambda: worker.exec("systemctl is-active k3s-agent || true").strip() == "failed", "the agent to fail")
    assert f"token is not valid: {url}/apis: 401 Unauthorized" in unit_log(worker, "k3s-agent")

    worker.exec("k3s-agent-uninstall.sh >/dev/null 2>&1")
    assert upper_files(bed_slot, worker) == before
