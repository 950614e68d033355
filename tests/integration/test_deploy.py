"""inv deploy's library against the test bed's real API server (node simulator for pods/PVCs)."""

from __future__ import annotations

import io
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml

from k3stack import deploy as stack
from k3stack import pipeline, settings
from k3stack.apply import ApplyError
from k3stack.console import Console
from k3stack.kube import Kube, KubeError
from k3stack.rollout import RolloutError, Target, Waiter
from k3stack.secrets import SecretsError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def stack_env(kube):
    """Settings for a stack of its own (unique namespaces), plus a Kube and an output buffer."""
    suffix = uuid.uuid4().hex[:6]
    environ = {
        "DOMAIN": "203.0.113.10.sslip.io",
        "ACME_EMAIL": "ops@example.com",
        "STACK_NAMESPACE": f"llm-{suffix}",
        "MONITORING_NAMESPACE": f"mon-{suffix}",
    }
    out = io.StringIO()

    class Env:
        values = environ
        kube_client = Kube(str(kube.kubeconfig))
        console = Console(stream=out, interactive=False)
        output = out

        def settings(self, **overrides):
            return settings.load(env_dir=Path("/nonexistent"), environ={**environ, **overrides})

        def plan(self, **overrides):
            return stack.make_plan(self.settings(**overrides), stack.read_secret_from(self.kube_client))

        def deploy(self, plan=None, **kwargs):
            kwargs.setdefault("timeout", 60)
            return stack.deploy(self.kube_client, plan or self.plan(), self.console, **kwargs)

    yield Env()
    if kube.sim is not None:
        kube.sim.clear()
    for ns in (environ["STACK_NAMESPACE"], environ["MONITORING_NAMESPACE"]):
        Env.kube_client.delete("v1", "Namespace", ns)


def at_rest(kube: Kube, plan, timeout: float = 60) -> None:
    """Until every claim of the stack is Bound: Netdata's bind once the chart's pods are scheduled,
    after deploy's wait (which ends when the chart's install Job completes)."""
    namespaces = {m.namespace for m in plan.manifests if m.kind == "PersistentVolumeClaim"}
    deadline = time.monotonic() + timeout
    while True:
        claims = [c for ns in namespaces for c in kube.list("v1", "PersistentVolumeClaim", ns)]
        if all((c.get("status") or {}).get("phase") == "Bound" for c in claims):
            return
        assert time.monotonic() < deadline, [c["metadata"]["name"] for c in claims]
        time.sleep(0.2)


def resource_versions(kube: Kube, plan) -> dict:
    """Every object's resourceVersion, read under the API version deploy applied it with (the plan
    rendered for this cluster: the CronJob is batch/v1beta1 on the bed's Kubernetes 1.20)."""
    plan, _ = stack.prepare(kube, plan)
    return {
        m.key: kube.get(m.obj["apiVersion"], m.kind, m.name, m.namespace)["metadata"]["resourceVersion"]
        for m in plan.manifests
    }


def test_first_deploy_creates_everything_and_second_changes_nothing(stack_env):
    plan = stack_env.plan()
    first = stack_env.deploy(plan)
    assert {r.action for r in first.results} == {"created"}
    assert len(first.results) == len(plan.manifests)
    assert all(s.done for s in first.rollouts.values())
    assert {t.name for t in first.rollouts} == {"postgres", "redis", "ollama", "open-webui", "netdata"}
    kube = stack_env.kube_client
    claims = kube.list("v1", "PersistentVolumeClaim", plan.settings["STACK_NAMESPACE"])
    assert {c["metadata"]["name"]: c["status"]["phase"] for c in claims} == {
        "postgres-data": "Bound",
        "postgres-backups": "Bound",  # bound as PostgreSQL, which mounts it read-only, starts
        "redis-data": "Bound",
        "ollama-data": "Bound",
        "open-webui-data": "Bound",
    }
    # The scheduled backup: the bed's Kubernetes 1.20 serves CronJob as batch/v1beta1 only.
    ns = plan.settings["STACK_NAMESPACE"]
    cronjob = kube.get("batch/v1beta1", "CronJob", "postgres-backup", ns)
    assert kube.get("batch/v1", "CronJob", "postgres-backup", ns) is None
    assert cronjob["spec"]["schedule"] == "17 3 * * *"
    assert cronjob["spec"]["suspend"] is False
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert "cronjob.batch/postgres-backup created" in stack_env.output.getvalue()
    namespace = kube.get("v1", "Namespace", ns)
    assert "batch/v1beta1/CronJob" in namespace["metadata"]["annotations"]["k3stack.dev/prunable-kinds"]

    # Netdata's children on other nodes reach the parent from the nodes' addresses (the bed's node:
    # its InternalIP; it has no pod CIDR allocated), and from nothing else.
    nodes = kube.list("v1", "Node")
    policy = kube.get(
        "networking.k8s.io/v1", "NetworkPolicy", "netdata-parent-from-nodes", plan.settings["MONITORING_NAMESPACE"]
    )
    internal = sorted(
        f"{a['address']}/32" for n in nodes for a in n["status"]["addresses"] if a["type"] == "InternalIP"
    )
    assert internal
    assert policy["spec"]["ingress"] == [
        {"from": [{"ipBlock": {"cidr": c}} for c in internal], "ports": [{"port": 19999, "protocol": "TCP"}]}
    ]

    at_rest(kube, plan)
    before = resource_versions(kube, plan)
    writes_before = kube.requests["PATCH"] + kube.requests["POST"] + kube.requests["DELETE"]
    again_plan = stack_env.plan()
    gets_before = kube.requests["GET"]
    again = stack_env.deploy(again_plan)
    gets = kube.requests["GET"] - gets_before
    cluster = kube.discover()
    listed = {k for k in {(m.obj["apiVersion"], m.kind) for m in plan.manifests} if cluster.serves(k[0])}
    # Reads of a no-op redeploy: one discovery pass (4), one LIST per kind in k8s/ (the prunable kinds
    # the first deploy recorded on the stack's namespace are all among them), and for the waits only
    # the chart's install Job — every workload at rest is judged from the apply's answer.
    assert gets == 4 + len(listed) + 1, gets
    assert {r.action for r in again.results} == {"unchanged"}
    assert not again.changed
    assert resource_versions(kube, plan) == before
    writes = kube.requests["PATCH"] + kube.requests["POST"] + kube.requests["DELETE"] - writes_before
    assert writes <= len(plan.manifests)  # at most one write per object
    assert "deployment.apps/ollama unchanged" in stack_env.output.getvalue()


def test_removed_manifest_is_pruned_but_volumes_and_secrets_are_not(stack_env):
    plan = stack_env.plan()
    stack_env.deploy(plan, wait=False)
    kept = [
        m
        for m in plan.manifests
        if not (m.kind == "Ingress" and m.name == "open-webui-http")
        and m.kind not in ("PersistentVolumeClaim", "Secret")
    ]
    smaller = stack.Plan(plan.settings, kept, plan.secrets)
    report = stack_env.deploy(smaller, wait=False)
    assert [r.describe for r in report.pruned] == ["ingress.networking.k8s.io/open-webui-http"]
    ns = plan.settings["STACK_NAMESPACE"]
    kube = stack_env.kube_client
    assert kube.get("networking.k8s.io/v1", "Ingress", "open-webui-http", ns) is None
    assert kube.get("v1", "PersistentVolumeClaim", "ollama-data", ns) is not None
    assert kube.get("v1", "Secret", "postgres", ns) is not None


def test_passwords_and_volumes_survive_redeploy_destroy_and_redeploy(stack_env):
    stack_env.deploy(wait=False)
    plan = stack_env.plan()
    assert plan.secrets.origins["POSTGRES_PASSWORD"] == "cluster"
    password = plan.secrets.values["POSTGRES_PASSWORD"]
    ns = plan.settings["STACK_NAMESPACE"]
    kube = stack_env.kube_client
    claim_uid = kube.get("v1", "PersistentVolumeClaim", "postgres-data", ns)["metadata"]["uid"]

    stack.destroy(kube, plan, stack_env.console)
    assert kube.get("apps/v1", "Deployment", "postgres", ns) is None
    assert kube.get("v1", "PersistentVolumeClaim", "postgres-data", ns)["metadata"]["uid"] == claim_uid

    again = stack_env.plan()
    assert again.secrets.values["POSTGRES_PASSWORD"] == password
    stack_env.deploy(again)
    assert kube.get("v1", "PersistentVolumeClaim", "postgres-data", ns)["metadata"]["uid"] == claim_uid
    assert password not in stack_env.output.getvalue()


def test_a_different_postgres_password_for_an_existing_volume_is_refused(stack_env):
    stack_env.deploy(wait=False)
    with pytest.raises(SecretsError, match=r"POSTGRES_PASSWORD: differs from the password the existing database"):
        stack_env.plan(POSTGRES_PASSWORD="another-password-entirely")


def test_a_lost_secret_is_refused_while_its_volume_stays(stack_env):
    """Issue 14 #3: Secret postgres deleted, PVC kept → no new password, one line, nothing applied."""
    stack_env.deploy(wait=False)
    kube, ns = stack_env.kube_client, stack_env.values["STACK_NAMESPACE"]
    kube.delete("v1", "Secret", "postgres", ns)
    with pytest.raises(SecretsError, match=r"POSTGRES_PASSWORD: Secret .*/postgres is gone but volume postgres-data"):
        pipeline.plan(stack_env.settings(), kube, stack_env.console)
    assert kube.get("v1", "Secret", "postgres", ns) is None  # nothing was written


def test_purge_never_deletes_a_namespace_k3stack_did_not_create(stack_env):
    """Issue 14 #1: MONITORING_NAMESPACE names a namespace another team made, with their objects."""
    kube, theirs = stack_env.kube_client, stack_env.values["MONITORING_NAMESPACE"]
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": theirs}}, field_manager="team")
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "team-config", "namespace": theirs}}
    kube.apply({**config, "data": {"a": "b"}}, field_manager="team")
    stack_env.deploy(wait=False)
    labels = kube.get("v1", "Namespace", theirs)["metadata"].get("labels") or {}
    assert "k3stack.dev/instance" not in labels
    assert labels.get("app.kubernetes.io/managed-by") != "k3stack"
    ours = stack_env.values["STACK_NAMESPACE"]
    assert kube.get("v1", "Namespace", ours)["metadata"]["annotations"]["k3stack.dev/created-by"] == ours

    stack.destroy(kube, stack_env.plan(), stack_env.console, purge=True, timeout=60)
    assert kube.get("v1", "ConfigMap", "team-config", theirs) is not None
    assert (kube.get("v1", "Namespace", theirs) or {}).get("metadata", {}).get("deletionTimestamp") is None
    assert f"namespace/{theirs} kept" in stack_env.output.getvalue()
    gone = kube.get("v1", "Namespace", ours)
    assert gone is None or gone["metadata"].get("deletionTimestamp")


def test_a_second_stack_or_a_renamed_one_cannot_take_over_the_monitoring_namespace(stack_env):
    """Issue 14 #5: another stack (or this one with STACK_NAMESPACE renamed) naming the same
    MONITORING_NAMESPACE is stopped before anything is written; the first stack's Netdata stays."""
    stack_env.deploy(wait=False)
    kube, first = stack_env.kube_client, stack_env.values["STACK_NAMESPACE"]
    renamed = f"{first}-renamed"
    try:
        with pytest.raises(ApplyError, match=rf"belongs to k3stack stack '{first}', not '{renamed}'"):
            stack_env.deploy(stack_env.plan(STACK_NAMESPACE=renamed), wait=False)
        assert kube.get("v1", "Namespace", renamed) is None  # nothing was written
        chart = kube.get("helm.cattle.io/v1", "HelmChart", "netdata", stack_env.values["MONITORING_NAMESPACE"])
        assert chart["metadata"]["labels"]["k3stack.dev/instance"] == first
        with pytest.raises(ApplyError, match="same MONITORING_NAMESPACE"):
            stack.deploy_many(kube, [stack_env.plan(), stack_env.plan(STACK_NAMESPACE=renamed)], stack_env.console)
    finally:
        kube.delete("v1", "Namespace", renamed)


def test_a_changed_secret_rolls_open_webui(stack_env):
    plan = stack_env.plan(REDIS_PASSWORD="first-redis-password")
    stack_env.deploy(plan)
    kube = stack_env.kube_client
    ns = plan.settings["STACK_NAMESPACE"]
    template = kube.get("apps/v1", "Deployment", "open-webui", ns)["spec"]["template"]
    report = stack_env.deploy(stack_env.plan(REDIS_PASSWORD="second-redis-password"))
    actions = {r.describe: r.action for r in report.results if r.namespace == ns}
    assert actions["secret/open-webui"] == "configured"
    assert actions["deployment.apps/open-webui"] == "configured"
    new_template = kube.get("apps/v1", "Deployment", "open-webui", ns)["spec"]["template"]
    assert (
        new_template["metadata"]["annotations"]["k3stack.dev/secret-checksum"]
        != template["metadata"]["annotations"]["k3stack.dev/secret-checksum"]
    )
    assert "second-redis-password" not in stack_env.output.getvalue()


def test_conflict_with_another_field_manager_is_explained_and_force_takes_over(stack_env):
    plan = stack_env.plan()
    stack_env.deploy(plan, wait=False)
    ns = plan.settings["STACK_NAMESPACE"]
    kube = stack_env.kube_client
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ollama", "namespace": ns},
            "spec": {"replicas": 3},
        },
        field_manager="kubectl-scale",
        force=True,
    )
    with pytest.raises(ApplyError) as error:
        stack_env.deploy(stack_env.plan(), wait=False)
    message = str(error.value)
    assert "deployment.apps/ollama (llm-stack/ollama.yaml): conflict" in message
    assert 'conflict with "kubectl-scale"' in message
    assert ".spec.replicas" in message
    assert "--force" in message
    report = stack_env.deploy(stack_env.plan(), wait=False, force=True)
    assert {r.describe: r.action for r in report.results}["deployment.apps/ollama"] == "configured"
    assert kube.get("apps/v1", "Deployment", "ollama", ns)["spec"]["replicas"] == 1


def test_shrinking_a_volume_gets_a_clear_error(stack_env):
    stack_env.deploy(wait=False)
    with pytest.raises(ApplyError) as error:
        stack_env.deploy(stack_env.plan(OLLAMA_STORAGE="1Gi"), wait=False)
    message = str(error.value)
    assert "persistentvolumeclaim/ollama-data (llm-stack/ollama.yaml)" in message
    assert "cannot be changed on an existing PersistentVolumeClaim" in message
    assert "k3stack never deletes volumes" in message
    assert "HTTP response body" not in message


def test_dry_run_changes_nothing(stack_env):
    plan = stack_env.plan()
    report = stack_env.deploy(plan, dry_run=True)
    assert {r.action for r in report.results} == {"created"}
    assert stack_env.kube_client.get("v1", "Namespace", plan.settings["STACK_NAMESPACE"]) is None
    assert "(server dry run)" in stack_env.output.getvalue()


def test_diff_shows_changes_with_secrets_redacted(stack_env):
    # At rest first (rollouts done, claims bound): controllers no longer change what diff compares.
    first = stack_env.plan(REDIS_PASSWORD="first-redis-password")
    stack_env.deploy(first)
    at_rest(stack_env.kube_client, first)
    plan = stack_env.plan(REDIS_PASSWORD="second-redis-password", OLLAMA_MEMORY_LIMIT="12Gi")
    stack_env.console.add_secrets(plan.secrets.values.values())
    changed = stack.show_diff(stack_env.kube_client, plan, stack_env.console)
    text = stack_env.output.getvalue()
    assert changed == 5  # redis + open-webui Secrets; redis, open-webui (checksums) and ollama Deployments
    assert "-            memory: 16Gi" in text
    assert "+            memory: 12Gi" in text
    assert "<redacted sha256:" in text
    assert "second-redis-password" not in text
    assert "first-redis-password" not in text


def test_a_pod_that_never_becomes_ready_times_out_with_the_reason(stack_env, kube):
    if kube.sim is None:
        pytest.skip("needs the built-in bed's node simulator")
    plan = stack_env.plan()
    kube.sim.fail(plan.settings["STACK_NAMESPACE"], {"app.kubernetes.io/name": "ollama"}, "model dir not writable")
    with pytest.raises(RolloutError) as error:
        stack_env.deploy(plan, timeout=5)
    message = str(error.value)
    assert message.startswith("timed out after 5s waiting for deployment.apps/ollama")
    assert "0 of 1 updated replicas are available" in message
    assert "CrashLoopBackOff model dir not writable" in message


def test_status_rows_show_readiness_images_volumes_and_urls(stack_env):
    plan = stack_env.plan()
    stack_env.deploy(plan)
    rows = {row[1]: row for row in stack.status_rows(stack_env.kube_client, plan)}
    ollama = rows["deployment.apps/ollama"]
    assert ollama[2:5] == ["1/1", "ready", "0.32.15"]
    assert ollama[5].startswith("ollama-data Bound")
    assert rows["deployment.apps/open-webui"][6] == "https://chat.203.0.113.10.sslip.io"
    assert rows["helmchart.helm.cattle.io/netdata"][3] == "ready"
    assert rows["deployment.apps/postgres"][5].endswith("; postgres-backups Bound 5Gi")
    # The scheduled backup: no run yet; then one (a Job from its template, as `kubectl create job
    # --from=cronjob/postgres-backup` makes it), which the node completes: its age is shown.
    shown = rows["cronjob.batch/postgres-backup"]
    assert shown == [
        plan.instance,
        "cronjob.batch/postgres-backup",
        "never yet",
        "ready",
        "17.6",
        "postgres-backups Bound 5Gi",
        "-",
    ]
    kube = stack_env.kube_client
    cronjob = kube.get("batch/v1beta1", "CronJob", "postgres-backup", plan.instance)
    template = cronjob["spec"]["jobTemplate"]
    owner = {"apiVersion": "batch/v1beta1", "kind": "CronJob", "name": "postgres-backup"}
    metadata = {"name": "postgres-backup-manual", "namespace": plan.instance, **template["metadata"]}
    metadata["ownerReferences"] = [{**owner, "uid": cronjob["metadata"]["uid"]}]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]}
    kube.request("POST", f"/apis/batch/v1/namespaces/{plan.instance}/jobs", body=job)
    for _ in range(120):
        rows = {row[1]: row for row in stack.status_rows(kube, plan)}
        if rows["cronjob.batch/postgres-backup"][2] != "never yet":
            break
        time.sleep(0.5)
    assert re.fullmatch(r"\d+s ago", rows["cronjob.batch/postgres-backup"][2]), rows["cronjob.batch/postgres-backup"]
    assert rows["cronjob.batch/postgres-backup"][3] == "ready"
    assert stack.healthy(list(rows.values()))


def test_forbidden_user_gets_an_explained_error(kube):
    if kube.sim is None:
        pytest.skip("needs the built-in bed's PKI")
    nobody = Kube(str(kube.kubeconfig_for("nobody")))
    with pytest.raises(KubeError, match=r"forbidden \(403\).*use the cluster's admin kubeconfig"):
        nobody.list("apps/v1", "Deployment", "default")


def test_unreachable_api_server_is_explained(tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n"
        "users:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: x\n  context:\n    cluster: c\n"
        "    user: u\ncurrent-context: x\n"
    )
    unreachable = Kube(str(config), retries=1)
    with pytest.raises(KubeError, match=r"cannot reach the Kubernetes API at https://127.0.0.1:9 .*`inv kubeconfig`"):
        unreachable.list("v1", "Namespace")


def test_missing_kubeconfig_is_explained(tmp_path):
    with pytest.raises(KubeError, match=r"kubeconfig .*missing.* fix: `inv kubeconfig`"):
        Kube(str(tmp_path / "missing"))


def test_an_object_the_server_rejects_stops_before_later_phases(stack_env):
    plan = stack_env.plan()
    broken = []
    for m in plan.manifests:
        if m.kind == "Service" and m.name == "redis":
            obj = {**m.obj, "spec": {**m.obj["spec"], "ports": [{"name": "redis", "port": 70000, "protocol": "TCP"}]}}
            m = type(m)(obj, m.source)
        broken.append(m)
    with pytest.raises(ApplyError) as error:
        stack_env.deploy(stack.Plan(plan.settings, broken, plan.secrets), wait=False)
    message = str(error.value)
    assert "service/redis (llm-stack/redis.yaml): rejected as invalid (422): spec.ports[0].port" in message
    assert "fix the manifest in k8s/llm-stack/redis.yaml" in message
    applied = {r.describe for r in error.value.results}
    assert "service/ollama" in applied  # its own phase went through
    ns = plan.settings["STACK_NAMESPACE"]
    assert stack_env.kube_client.get("apps/v1", "Deployment", "ollama", ns) is None  # later phases did not


def test_several_stacks_in_one_run_list_each_kind_once(stack_env):
    suffix = uuid.uuid4().hex[:6]
    second = {"STACK_NAMESPACE": f"llm2-{suffix}", "MONITORING_NAMESPACE": f"mon2-{suffix}"}
    kube = stack_env.kube_client
    try:
        plans = [stack_env.plan(), stack_env.plan(**second)]
        first = stack.deploy_many(kube, plans, stack_env.console, timeout=90)
        assert {r.action for r in first.results} == {"created"}
        assert len(first.results) == sum(len(p.manifests) for p in plans)
        assert {t.namespace for t in first.rollouts} >= {p.instance for p in plans}
        assert f"{second['STACK_NAMESPACE']}/deployment.apps/ollama created" in stack_env.output.getvalue()

        for plan in plans:
            at_rest(kube, plan)

        def gets(run) -> int:
            before = kube.requests["GET"]
            reports = run()
            assert all(not r.changed for r in reports)
            return kube.requests["GET"] - before

        together = gets(lambda: [stack.deploy_many(kube, plans, stack_env.console, timeout=90)])
        apart = gets(lambda: [stack.deploy(kube, p, stack_env.console, timeout=90) for p in plans])
        # Stacks at rest: the waits cost the same; deploy_many saved one LIST per kind it lists (the
        # served ones) and one discovery pass (4 GETs: /version, /apis, the HelmChart CRD, the Nodes).
        cluster = kube.discover()
        listed_kinds = {(m.obj["apiVersion"], m.kind) for m in plans[0].manifests}
        assert apart - together == len({k for k in listed_kinds if cluster.serves(k[0])}) + 4

        same = [stack_env.plan(), stack_env.plan()]
        with pytest.raises(ApplyError, match="same STACK_NAMESPACE"):
            stack.deploy_many(kube, same, stack_env.console)
    finally:
        for ns in second.values():
            kube.delete("v1", "Namespace", ns)


# -- issue 13: status, diff wording, a chart still being deleted, Failed conditions -------------------
def test_status_of_a_half_deployed_stack_says_missing_and_is_not_healthy(stack_env):
    plan = stack_env.plan()
    early = [m for m in plan.manifests if m.phase <= 3]  # namespaces, secrets, claims, services: no workloads
    stack_env.deploy(stack.Plan(plan.settings, early, plan.secrets), wait=False, prune=False)
    rows = {row[1]: row for row in stack.status_rows(stack_env.kube_client, plan)}
    assert rows["deployment.apps/ollama"][2:4] == ["-", "missing"]
    assert rows["helmchart.helm.cattle.io/netdata"][2:4] == ["-", "missing"]
    assert not stack.healthy(list(rows.values()))
    stack_env.deploy(plan)
    assert stack.healthy(stack.status_rows(stack_env.kube_client, plan))


def test_diff_of_an_object_the_server_rejects_says_nothing_was_changed(stack_env):
    plan = stack_env.plan()
    stack_env.deploy(plan, wait=False)
    kube = stack_env.kube_client
    before = {m.key: kube.get("v1", "Service", m.name, m.namespace) for m in plan.manifests if m.kind == "Service"}
    broken = [
        type(m)({**m.obj, "spec": {**m.obj["spec"], "ports": [{"port": 70000, "protocol": "TCP"}]}}, m.source)
        if m.kind == "Service" and m.name == "redis"
        else m
        for m in plan.manifests
    ]
    with pytest.raises(ApplyError) as error:
        stack.show_diff(stack_env.kube_client, stack.Plan(plan.settings, broken, plan.secrets), stack_env.console)
    message = str(error.value)
    assert message.startswith("the server would reject 1 object(s) (server dry run: nothing was changed)")
    assert "later phases" not in message
    assert "service/redis (llm-stack/redis.yaml): rejected as invalid (422)" in message
    assert {m.key: kube.get("v1", "Service", m.name, m.namespace) for m in plan.manifests if m.kind == "Service"} == (
        before
    )


def test_deploy_right_after_a_chart_was_deleted_waits_for_helm_delete(stack_env):
    plan = stack_env.plan()
    stack_env.deploy(plan)
    kube = stack_env.kube_client
    monitoring = plan.settings["MONITORING_NAMESPACE"]
    kube.delete("helm.cattle.io/v1", "HelmChart", "netdata", monitoring)  # Terminating: helm-delete runs
    assert kube.get("helm.cattle.io/v1", "HelmChart", "netdata", monitoring)["metadata"]["deletionTimestamp"]
    report = stack_env.deploy(stack_env.plan())
    assert {r.describe: r.action for r in report.results}["helmchart.helm.cattle.io/netdata"] == "created"
    chart = kube.get("helm.cattle.io/v1", "HelmChart", "netdata", monitoring)
    assert not chart["metadata"].get("deletionTimestamp")
    assert all(s.done for s in report.rollouts.values())
    assert "to be gone (still being deleted)" in stack_env.output.getvalue()


def test_a_chart_the_helm_controller_fails_is_failed_with_helms_message(kube, namespace):
    if kube.sim is None:
        pytest.skip("needs the built-in bed's simulated helm-controller")
    client = Kube(str(kube.kubeconfig))
    chart = {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": "demo", "namespace": namespace},
        "spec": {"chart": "demo", "repo": "https://charts.invalid", "timeout": "soon"},
    }
    client.apply(chart, field_manager="k3stack")
    waiter = Waiter(client, interval=0.2)
    target = Target("helm.cattle.io/v1", "HelmChart", namespace, "demo")
    with pytest.raises(RolloutError) as error:
        waiter.wait([target], timeout=30)
    message = str(error.value)
    assert message.startswith("failed: helmchart.helm.cattle.io/demo")
    assert 'invalid duration "soon"' in message
    assert f"`kubectl -n {namespace} logs job/helm-install-demo`" in message


def test_netdata_volumes_the_chart_made_are_adopted_not_lost(stack_env):
    """A stack deployed before Netdata's claims were the stack's (the chart made them, persistence
    on): the next deploy adopts them -- same names, Helm's keep policy set before the chart's
    upgrade turns its persistence off -- so the upgrade does not delete them, nor does destroy."""
    plan = stack_env.plan()
    chart = next(m for m in plan.manifests if m.kind == "HelmChart")
    values = yaml.safe_load(chart.obj["spec"]["valuesContent"])
    values["parent"] = {
        **{k: v for k, v in values["parent"].items() if not k.startswith("extraVolume")},
        "database": {"persistence": True, "storageclass": "local-path", "volumesize": plan.settings["NETDATA_STORAGE"]},
        "alarms": {"persistence": True, "storageclass": "local-path", "volumesize": "1Gi"},
    }
    values["k8sState"] = {"persistence": {"enabled": True, "storageclass": "local-path", "volumesize": "1Gi"}}
    old_chart = type(chart)(
        {**chart.obj, "spec": {**chart.obj["spec"], "valuesContent": yaml.safe_dump(values)}}, chart.source
    )
    netdata_claims = {"netdata-parent-database", "netdata-parent-alarms", "netdata-k8s-state-varlib"}
    before = [
        old_chart if m is chart else m
        for m in plan.manifests
        if not (m.kind == "PersistentVolumeClaim" and m.name in netdata_claims)
    ]
    stack_env.deploy(stack.Plan(plan.settings, before, plan.secrets))
    kube = stack_env.kube_client
    monitoring = plan.settings["MONITORING_NAMESPACE"]

    def uids() -> dict[str, str]:
        return {
            c["metadata"]["name"]: c["metadata"]["uid"]
            for c in kube.list("v1", "PersistentVolumeClaim", monitoring)
            if not c["metadata"].get("deletionTimestamp")
        }

    made = uids()
    assert set(made) == netdata_claims  # the chart's own claims
    stack_env.deploy(plan)
    at_rest(kube, plan)
    assert uids() == made
    stack.destroy(kube, plan, stack_env.console)
    assert uids() == made
