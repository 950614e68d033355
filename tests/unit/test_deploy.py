"""Rendering for the cluster at hand (issue 13): deploy.for_cluster and the apply conflicts that
are a controller's by design, as pure functions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from k3stack import deploy as stack
from k3stack import settings
from k3stack.apply import by_design_conflict
from k3stack.kube import ApiError, Cluster, node_sources

V011 = frozenset(stack.OLDEST_HELMCHART_FIELDS)
V012 = V011 | {"failurePolicy"}
V017 = V012 | {"backOffLimit", "createNamespace", "authSecret", "podSecurityContext"}


@pytest.fixture(scope="module")
def plan():
    loaded = settings.load(
        env_dir=Path("/nonexistent"), environ={"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
    )
    return stack.make_plan(loaded, lambda namespace, name: None)


def cluster(*apis: str, fields=V017, minor=(1, 31), batch=("batch/v1", "batch/v1beta1")) -> Cluster:
    served = frozenset({"v1", "helm.cattle.io/v1", *batch, *apis})
    return Cluster(f"v{minor[0]}.{minor[1]}.0+k3s1", minor, served, fields)


def one(plan, kind: str) -> dict:
    return next(m.obj for m in plan.manifests if m.kind == kind)


@pytest.mark.parametrize(
    ("fields", "kept", "dropped"),
    [
        (V011, set(), {"failurePolicy", "timeout"}),  # K3s <= 1.22: neither known
        (V012, {"failurePolicy"}, {"timeout"}),  # knows failurePolicy, renders timeout as &Duration{...}
        (V017, {"failurePolicy", "timeout"}, set()),
        (None, set(), {"failurePolicy", "timeout"}),  # CRD not readable: the oldest controller's fields
    ],
)
def test_helmchart_keeps_only_what_the_controller_knows_and_parses(plan, fields, kept, dropped):
    adapted = stack.for_cluster(plan, cluster("traefik.io/v1alpha1", fields=fields))
    spec = one(adapted, "HelmChart")["spec"]
    assert kept <= set(spec)
    assert not dropped & set(spec)
    assert {"repo", "chart", "version", "valuesContent", "targetNamespace"} <= set(spec)
    assert one(plan, "HelmChart")["spec"]["failurePolicy"] == "abort"  # the plan itself is untouched
    notes = stack.dropped_fields(plan, adapted)
    assert notes == ([f"netdata: {', '.join(sorted(dropped))}"] if dropped else [])


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (("traefik.io/v1alpha1",), "traefik.io/v1alpha1"),
        (("traefik.containo.us/v1alpha1",), "traefik.containo.us/v1alpha1"),
        (("traefik.containo.us/v1alpha1", "traefik.io/v1alpha1"), "traefik.io/v1alpha1"),
    ],
)
def test_middleware_goes_to_the_traefik_group_the_cluster_serves(plan, served, expected):
    adapted = stack.for_cluster(plan, cluster(*served))
    assert {m.obj["apiVersion"] for m in adapted.manifests if m.kind == "Middleware"} == {expected}


def test_no_traefik_is_one_line_naming_what_is_missing_and_the_fix(plan):
    with pytest.raises(stack.ClusterError) as refused:
        stack.for_cluster(plan, cluster())
    message = str(refused.value)
    assert "\n" not in message
    assert "neither traefik.io nor traefik.containo.us" in message
    assert "needed for middleware.traefik.io/" in message
    assert "fix: enable K3s's bundled Traefik" in message


def test_no_helm_controller_and_an_old_kubernetes_are_refused(plan):
    no_helm = Cluster("v1.31.0+k3s1", (1, 31), frozenset({"v1", "batch/v1", "traefik.io/v1alpha1"}), None)
    with pytest.raises(stack.ClusterError, match=r"no helm.cattle.io/v1 .*--disable-helm-controller"):
        stack.for_cluster(plan, no_helm)
    with pytest.raises(stack.ClusterError, match=r"Kubernetes v1.19.0\+k3s1, older than the 1.20 k3stack supports"):
        stack.for_cluster(plan, cluster("traefik.io/v1alpha1", minor=(1, 19)))


def conflict(*managers: str, status: int = 409) -> ApiError:
    causes = [{"message": f'conflict with "{m}" using helm.cattle.io/v1', "field": ".spec"} for m in managers]
    return ApiError(status, {"reason": "Conflict", "details": {"causes": causes}}, "PATCH", "/x")


def test_only_the_helm_controllers_write_back_is_a_conflict_by_design():
    assert by_design_conflict("HelmChart", conflict("deploy"))
    assert by_design_conflict("HelmChart", conflict("helm-controller"))
    assert not by_design_conflict("HelmChart", conflict("deploy", "kubectl-edit"))  # a person's change too
    assert not by_design_conflict("HelmChart", conflict("kubectl-edit"))
    assert not by_design_conflict("Deployment", conflict("deploy"))
    assert not by_design_conflict("HelmChart", conflict("deploy", status=422))


# -- Netdata's children on other nodes (host network) reach the parent: the from-nodes policy ----
def node(internal: list[str], pod_cidrs: list[str] | None = None, **spec) -> dict:
    addresses = [{"type": "InternalIP", "address": a} for a in internal] + [
        {"type": "Hostname", "address": "n"},
        {"type": "ExternalIP", "address": "203.0.113.7"},  # a public address: nodes talk over the internal one
    ]
    return {"spec": {**({"podCIDRs": pod_cidrs} if pod_cidrs else {}), **spec}, "status": {"addresses": addresses}}


def test_node_sources_are_each_nodes_internal_ip_and_its_pod_cidrs_first_address():
    nodes = [
        node(["192.168.1.11"], ["10.42.1.0/24", "2001:db8:42:1::/64"]),
        node(["192.168.1.10", "fd00::10"], podCIDR="10.42.0.0/24"),  # before podCIDRs existed
        node(["192.168.1.10"]),  # the same address twice; no pod CIDR allocated yet
        node(["not-an-address"], ["10.42.9.0/24"]),
        {"spec": {}, "status": {}},
    ]
    assert node_sources(nodes) == (
        "10.42.0.0/32",
        "10.42.1.0/32",
        "10.42.9.0/32",
        "192.168.1.10/32",
        "192.168.1.11/32",
        "2001:db8:42:1::/128",
        "fd00::10/128",
    )


def from_nodes_policy(plan) -> dict:
    (policy,) = [
        m.obj
        for m in plan.manifests
        if m.kind == "NetworkPolicy" and stack.FROM_NODES in m.obj["metadata"].get("annotations", {})
    ]
    return policy


def test_deploy_admits_the_parents_port_from_every_node_address_and_nothing_else(plan):
    sources = ("10.42.1.0/32", "192.168.1.11/32", "fd00::11/128")
    adapted = stack.for_cluster(plan, dataclasses.replace(cluster("traefik.io/v1alpha1"), node_sources=sources))
    policy = from_nodes_policy(adapted)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "netdata", "release": "netdata", "role": "parent"}}
    assert policy["spec"]["ingress"] == [
        {"from": [{"ipBlock": {"cidr": c}} for c in sources], "ports": [{"port": 19999, "protocol": "TCP"}]}
    ]
    assert from_nodes_policy(plan)["spec"]["ingress"] == []  # the plan itself is left as it was
    others = [m.obj for m in adapted.manifests if m.kind == "NetworkPolicy" and m.obj is not policy]
    assert others == [
        m.obj
        for m in plan.manifests
        if m.kind == "NetworkPolicy" and stack.FROM_NODES not in m.obj["metadata"].get("annotations", {})
    ]


@pytest.mark.parametrize("sources", [None, ()])
def test_without_readable_nodes_the_from_nodes_policy_admits_nothing(plan, sources):
    adapted = stack.for_cluster(plan, dataclasses.replace(cluster("traefik.io/v1alpha1"), node_sources=sources))
    assert from_nodes_policy(adapted)["spec"]["ingress"] == []


# -- the scheduled backup's CronJob: batch/v1 from 1.21, batch/v1beta1 before (issue 17) ---------------
@pytest.mark.parametrize(
    ("minor", "expected"),
    [
        ((1, 20), "batch/v1beta1"),
        ((1, 21), "batch/v1"),
        ((1, 24), "batch/v1"),
        ((1, 31), "batch/v1"),
        ((2, 0), "batch/v1"),
    ],
)
def test_the_cronjob_goes_to_the_batch_version_the_cluster_serves_it_in(plan, minor, expected):
    adapted = stack.for_cluster(plan, cluster("traefik.io/v1alpha1", minor=minor))
    assert [m.obj["apiVersion"] for m in adapted.manifests if m.kind == "CronJob"] == [expected]
    assert one(plan, "CronJob")["apiVersion"] == "batch/v1"  # the plan itself is untouched
    rest = [m.obj for m in adapted.manifests if m.kind not in ("CronJob", "Middleware", "HelmChart", "NetworkPolicy")]
    assert rest == [
        m.obj for m in plan.manifests if m.kind not in ("CronJob", "Middleware", "HelmChart", "NetworkPolicy")
    ]
    assert {m.obj["apiVersion"] for m in adapted.manifests if m.kind == "Job"} <= {"batch/v1"}


def test_a_cluster_without_the_cronjob_api_is_refused_before_anything_is_written(plan):
    with pytest.raises(stack.ClusterError) as refused:
        stack.for_cluster(plan, cluster("traefik.io/v1alpha1", minor=(1, 20), batch=("batch/v1",)))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the cluster serves no batch/v1beta1 (CronJob on Kubernetes v1.20.0+k3s1), needed for ")
    assert "cronjob.batch/postgres-backup (k8s/llm-stack/backup.yaml) — fix: " in message


@pytest.mark.parametrize(
    ("version", "expected"), [("1.20", "batch/v1beta1"), ("1.21", "batch/v1"), ("1.35", "batch/v1")]
)
def test_render_without_a_cluster_follows_k8s_version(version, expected):
    loaded = settings.load(
        env_dir=Path("/nonexistent"),
        environ={"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com", "K8S_VERSION": version},
    )
    made = stack.make_plan(loaded, lambda namespace, name: None)
    assert [m.obj["apiVersion"] for m in made.manifests if m.kind == "CronJob"] == [expected]
    assert stack.cronjob_api((1, int(version.split(".")[1]))) == expected


class Objects:
    """Kube's get/list over a few objects: (apiVersion, kind, namespace, name) -> object; list by
    kind and namespace (the label selector is recorded, not applied: every Job given is listed)."""

    def __init__(self, *objects: dict):
        self.objects = {
            (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects
        }
        self.asked: list[tuple] = []

    def get(self, api_version, kind, name, namespace=None):
        self.asked.append(("GET", api_version, kind, name))
        return self.objects.get((api_version, kind, namespace or "", name))

    def list(self, api_version, kind, namespace=None, *, label_selector="", field_selector=""):
        self.asked.append(("LIST", api_version, kind, label_selector))
        return [
            o
            for (a, k, ns, _), o in self.objects.items()
            if (a, k) == (api_version, kind) and ns in ("", namespace or "")
        ]


NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def stamp(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def live_cronjob(api="batch/v1beta1", schedule="17 3 * * *", suspend=False, created=200.0, **status) -> dict:
    return {
        "apiVersion": api,
        "kind": "CronJob",
        "metadata": {
            "name": "postgres-backup",
            "namespace": "llm-stack",
            "uid": "u1",
            "creationTimestamp": stamp(created),
        },
        "spec": {"schedule": schedule, "suspend": suspend},
        "status": status,
    }


def backup_job(name: str, hours_ago: float, ok: bool) -> dict:
    status = (
        {"succeeded": 1, "completionTime": stamp(hours_ago), "conditions": [{"type": "Complete", "status": "True"}]}
        if ok
        else {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    )
    meta = {"name": name, "namespace": "llm-stack", "creationTimestamp": stamp(hours_ago + 0.1)}
    meta["ownerReferences"] = [{"kind": "CronJob", "name": "postgres-backup", "uid": "u1"}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "status": status}


CLAIM = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "postgres-backups", "namespace": "llm-stack"},
    "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}},
}


@pytest.mark.parametrize(
    ("objects", "ready", "state"),
    [
        ([], "-", "missing"),
        ([live_cronjob(created=3)], "never yet", "ready"),
        ([live_cronjob(created=60)], "never yet", "not ready: no success yet, 2d after its creation (runs every 1d)"),
        ([live_cronjob(suspend=True)], "suspended", "ready"),
        ([live_cronjob(), backup_job("postgres-backup-1", 5, ok=True)], "5h ago", "ready"),
        ([live_cronjob(api="batch/v1", lastSuccessfulTime=stamp(2))], "2h ago", "ready"),
        (
            [live_cronjob(), backup_job("postgres-backup-1", 50, ok=True)],
            "2d ago",
            "not ready: last success 2d ago, over twice its interval (every 1d)",
        ),
        (
            [live_cronjob(schedule="0 * * * *"), backup_job("postgres-backup-1", 3, ok=True)],
            "3h ago",
            "not ready: last success 3h ago, over twice its interval (every 1h)",
        ),
        # a schedule status cannot read (edited by hand): stale after 48 h
        ([live_cronjob(schedule="TZ=UTC 0 * * * *"), backup_job("postgres-backup-1", 47, ok=True)], "1d ago", "ready"),
        (
            [live_cronjob(schedule="TZ=UTC 0 * * * *"), backup_job("postgres-backup-1", 49, ok=True)],
            "2d ago",
            "not ready: last success 2d ago, over twice its interval (every 1d)",
        ),
        (
            [
                live_cronjob(),
                backup_job("postgres-backup-1", 30, ok=True),
                backup_job("postgres-backup-2", 6, ok=False),
            ],
            "1d ago",
            "FAILED: its last job postgres-backup-2 failed (BackoffLimitExceeded); last success 1d ago",
        ),
    ],
    ids=[
        "missing",
        "never",
        "never-stale",
        "suspended",
        "fresh-v1beta1",
        "fresh-v1",
        "stale",
        "stale-hourly",
        "unreadable",
        "unreadable-stale",
        "failed",
    ],
)
def test_status_shows_the_cronjob_with_its_last_backups_age(plan, objects, ready, state):
    kube = Objects(CLAIM, *objects)
    rows = stack.status_rows(
        kube, stack.Plan(plan.settings, [m for m in plan.manifests if m.kind == "CronJob"], plan.secrets), NOW
    )
    api = objects[0]["apiVersion"] if objects else "batch/v1beta1"
    group = "cronjob.batch/postgres-backup"
    assert rows == [["llm-stack", group, ready, state, "17.6", "postgres-backups Bound 5Gi", "-"]]
    assert stack.healthy(rows) is (state == "ready")
    gets = [a for a in kube.asked if a[0] == "GET"]
    # the manifest's version first, then the other one (a cluster older than the render)
    assert [g[1] for g in gets] == (["batch/v1"] if api == "batch/v1" else ["batch/v1", "batch/v1beta1"])
    if objects:
        assert ("LIST", "batch/v1", "Job", "app.kubernetes.io/name=postgres-backup") in kube.asked
