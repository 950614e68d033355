"""Every row of the support matrix on the bed: the API a K3s of that era serves (the HelmChart CRD
of its helm-controller, Traefik's Middleware group or none) and a simulated helm-controller that
behaves like that version (writes .spec back under manager `deploy`, runs helm-delete behind a
finalizer, renders spec.timeout as that version does). issue 13."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from k3stack import deploy as stack
from k3stack.apply import FIELD_MANAGER
from k3stack.kube import ApiError, Kube
from k3stack.manifests import REPO
from tests.integration.test_deploy import at_rest, stack_env  # noqa: F401 - a fixture
from tests.testbed.ingress import Ingress, TestCA

pytestmark = pytest.mark.timeout(600)

# (K3s minors, helm-controller, Traefik groups served). Which K3s shipped which is upstream's
# history (FIELD-NOTES "K3s controllers" / "Traefik on K3s"); what deploy relies on is only what
# the cluster serves, read at the start of every run.
ROWS = {
    "k3s-1.21-1.22": ("v0.11", ("traefik.containo.us",)),
    "k3s-1.23-1.26": ("v0.12", ("traefik.containo.us",)),
    "k3s-1.27-1.31": ("v0.17", ("traefik.io", "traefik.containo.us")),
    "k3s-1.32+": ("v0.17", ("traefik.io",)),
}
NETDATA_CLAIMS = {"netdata-parent-database", "netdata-parent-alarms", "netdata-k8s-state-varlib"}


@pytest.fixture
def bed(kube):
    if kube.sim is None:
        pytest.skip("needs the built-in bed (its simulated helm-controller and CRD variants)")
    yield kube
    kube.use_k3s()  # back to the default K3s for the other tests


@pytest.fixture
def env(stack_env):  # noqa: F811 - the fixture imported above
    """test_deploy's stack of its own (unique namespaces, deleted afterwards)."""
    return stack_env


def writes(kube: Kube) -> int:
    return kube.requests["PATCH"] + kube.requests["POST"] + kube.requests["PUT"] + kube.requests["DELETE"]


def live_versions(kube: Kube, plan) -> dict:
    found = {}
    for m in plan.manifests:
        obj = kube.get(m.obj["apiVersion"], m.kind, m.name, m.namespace)
        found[m.key] = obj["metadata"]["resourceVersion"]
    return found


def claims(kube: Kube, plan) -> dict[str, str]:
    """name -> uid of the stack's claims that are not being deleted (a claim helm uninstall deleted
    stays Terminating while a pod still mounts it: it is lost all the same)."""
    return {
        c["metadata"]["name"]: c["metadata"]["uid"]
        for ns in (plan.settings["STACK_NAMESPACE"], plan.settings["MONITORING_NAMESPACE"])
        for c in kube.list("v1", "PersistentVolumeClaim", ns)
        if not c["metadata"].get("deletionTimestamp")
    }


@pytest.mark.parametrize("row", list(ROWS))
def test_matrix_row_deploys_idempotently_prunes_and_keeps_data(bed, env, row):
    helm_controller, traefik = ROWS[row]
    bed.use_k3s(helm_controller=helm_controller, traefik=traefik)
    kube = env.kube_client
    first = env.deploy()
    assert {r.action for r in first.results} == {"created"}
    assert all(s.done for s in first.rollouts.values())  # the Netdata chart's install Job completed
    monitoring = env.values["MONITORING_NAMESPACE"]
    middleware_api = f"{traefik[0]}/v1alpha1"
    assert kube.get(middleware_api, "Middleware", "netdata-auth", monitoring) is not None
    # and routes: the Traefik stand-in finds the basic-auth Middleware in the group this cluster serves
    monitor_host = env.plan().settings["MONITOR_HOST"]
    ingress = Ingress(
        kube, [monitoring], TestCA().issue([monitor_host]), chart_backends={(monitoring, "netdata"): ("127.0.0.1", 9)}
    )
    try:
        route = ingress.match("websecure", monitor_host, "/")
        assert route is not None, f"no route for {monitor_host} on {row}"
        assert [sorted(m) for m in route.middlewares] == [["basicAuth", "namespace"]]
    finally:
        ingress.close()
    chart = kube.get("helm.cattle.io/v1", "HelmChart", "netdata", monitoring)
    assert chart["metadata"]["finalizers"]  # the controller has reconciled (and written) it
    assert "deploy" in {f["manager"] for f in chart["metadata"]["managedFields"]}

    plan, _ = stack.prepare(kube, env.plan())
    at_rest(kube, plan)
    before = live_versions(kube, plan)
    requests_before = sum(kube.requests.values())
    again = env.deploy()
    no_op_requests = sum(kube.requests.values()) - requests_before
    assert {r.action for r in again.results} == {"unchanged"}, [r for r in again.results if r.action != "unchanged"]
    assert not again.changed
    assert live_versions(kube, plan) == before
    print(f"{row}: no-op deploy = {no_op_requests} API requests")  # measurement, shown with -s
    third = env.deploy(wait=False)
    assert not third.changed  # the controller did not take anything back in between

    # diff and dry run see no change
    assert stack.show_diff(kube, env.plan(), env.console) == 0
    dry = env.deploy(dry_run=True)
    assert {r.action for r in dry.results} == {"unchanged"}

    # remove a manifest (monitoring/auth.yaml: the Middleware) -> prune exactly its objects
    full = env.plan()
    smaller = stack.Plan(full.settings, [m for m in full.manifests if m.source != "monitoring/auth.yaml"], full.secrets)
    pruned = env.deploy(smaller, wait=False)
    assert [(r.describe, r.namespace) for r in pruned.pruned] == [(f"middleware.{traefik[0]}/netdata-auth", monitoring)]
    assert kube.get(middleware_api, "Middleware", "netdata-auth", monitoring) is None
    env.deploy(wait=False)

    # destroy (no --purge) waits for helm-delete and keeps every PVC, Netdata's too, and passwords
    volumes = claims(kube, plan)
    assert set(volumes) >= NETDATA_CLAIMS
    password = plan.secrets.values["POSTGRES_PASSWORD"]
    stack.destroy(kube, env.plan(), env.console)
    assert kube.get("helm.cattle.io/v1", "HelmChart", "netdata", monitoring) is None
    assert kube.get("batch/v1", "Job", "helm-delete-netdata", monitoring) is None
    assert claims(kube, plan) == volumes
    back = env.plan()
    assert back.secrets.values["POSTGRES_PASSWORD"] == password
    again = env.deploy(back)  # right after destroy
    assert all(s.done for s in again.rollouts.values())
    assert claims(kube, plan) == volumes
    assert password not in env.output.getvalue()

    # --purge removes the volumes (a claim a pod still mounts is Terminating until the pod is gone)
    stack.destroy(kube, env.plan(), env.console, purge=True)
    assert claims(kube, plan) == {}


def test_old_helm_controller_takes_spec_back_as_on_a_real_k3s(bed, namespace):
    """The bed reproduces what a real v0.11.5 did: a field its schema lacks is written back away
    under manager `deploy`, which then owns `.spec`: the next apply with the field conflicts."""
    bed.use_k3s(helm_controller="v0.11", traefik=("traefik.containo.us",))
    kube = Kube(str(bed.kubeconfig))
    chart = {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": "demo", "namespace": namespace},
        "spec": {"chart": "demo", "repo": "https://charts.invalid", "failurePolicy": "abort", "timeout": "10m0s"},
    }
    kube.apply(chart, field_manager=FIELD_MANAGER)
    for _ in range(100):
        live = kube.get("helm.cattle.io/v1", "HelmChart", "demo", namespace)
        if "failurePolicy" not in live["spec"]:
            break
        __import__("time").sleep(0.1)
    assert "failurePolicy" not in live["spec"]
    with pytest.raises(ApiError) as conflict:
        kube.apply(chart, field_manager=FIELD_MANAGER)
    assert conflict.value.status == 409
    assert 'conflict with "deploy" using helm.cattle.io/v1: .spec' in str(conflict.value)
    job = None
    for _ in range(100):
        job = kube.get("batch/v1", "Job", "helm-install-demo", namespace)
        if job:
            break
        __import__("time").sleep(0.1)
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TIMEOUT"] == "&Duration{Duration:10m0s,}"


def inv(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG"))}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_no_traefik_is_refused_in_one_line_before_anything_is_written(bed, env, tmp_path):
    bed.use_k3s(traefik=())
    kube = env.kube_client
    written = writes(kube)
    with pytest.raises(stack.ClusterError) as refused:
        env.deploy()
    message = str(refused.value)
    assert "\n" not in message
    assert "neither traefik.io nor traefik.containo.us" in message
    assert "fix: enable K3s's bundled Traefik" in message
    assert writes(kube) == written
    assert kube.get("v1", "Namespace", env.values["STACK_NAMESPACE"]) is None

    # the CLI: exit 1, one line on stderr, no traceback; diff and destroy do not crash either
    env_file = tmp_path / "matrix.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.values.items()))
    env_file.chmod(0o600)
    cli = {"K3STACK_ENV_DIR": str(tmp_path)}
    for args in (("deploy",), ("deploy", "--dry-run"), ("diff",)):
        done = inv(*args, "--env", "matrix", "--kubeconfig", str(bed.kubeconfig), env=cli)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, done.stderr
        assert "no Traefik Middleware API" in errors[0], done.stderr
    done = inv("destroy", "--yes", "--env", "matrix", "--kubeconfig", str(bed.kubeconfig), env=cli)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kube.get("v1", "Namespace", env.values["STACK_NAMESPACE"]) is None


def test_a_by_design_conflict_never_fails_a_deploy(bed, env):
    """Even a HelmChart whose `.spec` the helm-controller owns (it wrote back a field k3stack sets
    differently) is applied; a person's change still stops a deploy (test_deploy: kubectl-scale)."""
    bed.use_k3s(helm_controller="v0.11", traefik=("traefik.containo.us",))
    kube = env.kube_client
    env.deploy(wait=False)
    monitoring = env.values["MONITORING_NAMESPACE"]
    chart = kube.get("helm.cattle.io/v1", "HelmChart", "netdata", monitoring)
    changed = {**chart, "spec": {**chart["spec"], "version": "0.0.1"}}
    kube.request(
        "PUT",
        f"/apis/helm.cattle.io/v1/namespaces/{monitoring}/helmcharts/netdata",
        query=[("fieldManager", "deploy")],
        body=changed,
    )
    report = env.deploy(wait=False)
    actions = {r.describe: r.action for r in report.results}
    assert actions["helmchart.helm.cattle.io/netdata"] == "configured"
    assert kube.get("helm.cattle.io/v1", "HelmChart", "netdata", monitoring)["spec"]["version"] != "0.0.1"


def test_inv_status_of_a_half_deployed_stack_says_missing_and_exits_1(bed, env, tmp_path):
    plan = env.plan()
    early = [m for m in plan.manifests if m.phase <= 3]
    env.deploy(stack.Plan(plan.settings, early, plan.secrets), wait=False, prune=False)
    env_file = tmp_path / "half.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.values.items()))
    env_file.chmod(0o600)
    done = inv("status", "--env", "half", "--kubeconfig", str(bed.kubeconfig), env={"K3STACK_ENV_DIR": str(tmp_path)})
    assert "missing" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert "deployment.apps/ollama" in errors[0]
