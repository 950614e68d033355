"""What `inv deploy` costs in API requests (issue 16), counted under the real Kube, pipeline and
task code (face.run_deploy) over an in-memory API server: a no-op redeploy makes one discovery pass,
one LIST per kind in k8s/ (a Secret LIST per stack while planning, reused by the deploy), one apply
per object, one LIST per namespace for unfinished rotations, and the Lease's own requests — a
request added back anywhere fails these counts. Prune still sees a kind that left k8s/ through the
record on the stack's namespace (apply.KINDS_RECORD)."""

from __future__ import annotations

import copy
import io
import json
import re
import threading
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit

from k3stack import apply, face, kinds, pipeline, rotate, settings
from k3stack import deploy as stack
from k3stack import manifests as mf
from k3stack import secrets as sec
from k3stack.console import Console
from k3stack.kube import REASONS, ApiError, Kube

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
SERVED = frozenset(
    {
        "v1",
        "apps/v1",
        "batch/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
        "apiextensions.k8s.io/v1",
        "coordination.k8s.io/v1",
        "helm.cattle.io/v1",
        "traefik.io/v1alpha1",
    }
)
# Every HelmChart spec field k8s/ sets, plus what tells a controller that parses spec.timeout.
CHART_FIELDS = frozenset(stack.OLDEST_HELMCHART_FIELDS | {"failurePolicy", stack.TIMEOUT_PARSED_WITH})
PATHS = {(r.prefix, r.plural): key for key, r in kinds.KNOWN.items()}
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "managedFields")


def selected(labels: dict[str, str], selector: str) -> bool:
    """Kubernetes' label selector (equality, `in (...)`, `!key`) over one object's labels."""
    for term in re.split(r",(?![^(]*\))", selector) if selector else []:
        if term.startswith("!"):
            ok = term[1:] not in labels
        elif " in (" in term:
            key, values = term.split(" in (")
            ok = labels.get(key) in values.rstrip(")").split(",")
        else:
            key, _, value = term.partition("=")
            ok = labels.get(key) == value
        if not ok:
            return False
    return True


class FakeApi:
    """An API server in memory: discovery, GET/LIST (label selectors), server-side apply (same
    resourceVersion when nothing changed), merge patch, POST/PUT/DELETE — what deploy asks. As the
    real one: a create into a namespace that is not there is 404 (NamespaceLifecycle), an update
    whose resourceVersion is not the object's 409, a delete whose preconditions (uid,
    resourceVersion) the object fails 409, and each object created gets a uid of its own."""

    def __init__(self, served: frozenset[str] = SERVED):
        self.served = served
        self.objects: dict[tuple[str, str, str, str], dict] = {}  # (prefix, plural, namespace, name)
        self.version = 0
        self.lock = threading.Lock()

    def where(self, path: str) -> tuple[str, str, str, str | None]:
        prefix = next(p for p, _ in sorted(PATHS, key=lambda k: -len(k[0])) if path.startswith(p + "/"))
        rest = path[len(prefix) + 1 :].split("/")
        if rest[0] == "namespaces" and len(rest) >= 3:
            return prefix, rest[2], rest[1], rest[3] if len(rest) > 3 else None
        return prefix, rest[0], "", rest[1] if len(rest) > 1 else None

    def answer(self, method: str, path: str, query: dict[str, str], body) -> tuple[int, dict]:
        if path == "/version":
            return 200, {"gitVersion": "v1.31.4+k3s1", "major": "1", "minor": "31"}
        if path == "/apis":
            return 200, {"groups": [{"versions": [{"groupVersion": v}]} for v in sorted(self.served - {"v1"})]}
        if path == "/api/v1/nodes":  # one node (Cluster.node_sources)
            node = {
                "spec": {"podCIDR": "10.42.0.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]},
            }
            return 200, {"items": [node]}
        if path.endswith("/customresourcedefinitions/helmcharts.helm.cattle.io"):
            spec = {"properties": {key: {} for key in CHART_FIELDS}}
            schema = {"openAPIV3Schema": {"properties": {"spec": spec}}}
            return 200, {"spec": {"versions": [{"name": "v1", "storage": True, "schema": schema}]}}
        prefix, plural, namespace, name = self.where(path)
        api_version, _kind = PATHS[(prefix, plural)]
        if api_version not in self.served:
            return 404, {"message": "the server could not find the requested resource"}
        key = (prefix, plural, namespace, name)
        with self.lock:
            if method == "GET" and name is None:
                items = [
                    copy.deepcopy(o)
                    for (p, r, ns, _), o in sorted(self.objects.items())
                    if (p, r) == (prefix, plural)
                    and namespace in ("", ns)
                    and selected(o["metadata"].get("labels") or {}, query.get("labelSelector", ""))
                ]
                return 200, {"items": [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]}
            if method == "POST":
                obj = body
                key = (prefix, plural, namespace, obj["metadata"]["name"])
                if namespace and ("/api/v1", "namespaces", "", namespace) not in self.objects:
                    gone = {"name": namespace, "kind": "namespaces"}
                    return 404, {"message": f'namespaces "{namespace}" not found', "details": gone}
                if key in self.objects:
                    return 409, {"message": "already exists"}
                return 201, self.store(key, obj)
            if key not in self.objects and method != "PATCH":
                return 404, {"message": f"{plural} {name!r} not found"}
            if method == "GET":
                return 200, copy.deepcopy(self.objects[key])
            meta = self.objects[key]["metadata"] if key in self.objects else {}
            if method == "DELETE":
                wanted = (body or {}).get("preconditions") or {}
                if any(meta[field] != value for field, value in wanted.items() if value is not None):
                    return 409, {"message": f"Precondition failed: {wanted}, the object's uid {meta['uid']}"}
                del self.objects[key]
                return 200, {}
            if method == "PUT":
                if body["metadata"].get("resourceVersion") not in (None, meta["resourceVersion"]):
                    return 409, {"message": "the object has been modified"}
                return 200, self.store(key, body, self.objects[key])
            if isinstance(body, str):  # server-side apply: what k3stack applies, plus others' annotations
                applied = json.loads(body)
                before = self.objects.get(key)
                theirs = (before or {}).get("metadata", {}).get("others", {})
                applied["metadata"].setdefault("annotations", {}).update(theirs)
                if query.get("dryRun") == "All":
                    return 200, applied
                return 200, self.store(key, applied, before, others=theirs)
            before = self.objects[key]  # a merge patch of annotations, by another field manager
            merged = copy.deepcopy(before)
            merged["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
            others = {**merged["metadata"].get("others", {}), **body["metadata"]["annotations"]}
            return 200, self.store(key, merged, before, others=others)

    def store(self, key, obj: dict, before: dict | None = None, *, others: dict | None = None) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        for field in SERVER_FIELDS:
            meta.pop(field, None)
        meta.pop("others", None)
        if before is not None:
            old = copy.deepcopy(before)
            kept = {f: old["metadata"].pop(f) for f in SERVER_FIELDS if f in old["metadata"]}
            old["metadata"].pop("others", None)
            if old == obj:
                return copy.deepcopy(before)  # nothing changed: same resourceVersion
            meta.update({k: v for k, v in kept.items() if k != "resourceVersion"})
        else:
            meta["uid"] = f"uid-{key[3]}-{self.version + 1}"  # a name created again is another object
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta["others"] = others or {}
        self.objects[key] = obj
        return copy.deepcopy(obj)


class CountingKube(Kube):
    """The real Kube (get, list, apply, discover, delete) over a FakeApi; every request is counted
    by verb (Kube.requests) and kept as (method, path, query) in `log`."""

    def __init__(self, api: FakeApi):
        self.fake = api
        self.server = "https://fake:6443"
        self.retries = 0
        self.requests = Counter()
        self.log: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self._discovered = {}
        self._discovering = threading.Lock()
        self.cluster = None

    def request(self, method, path, *, query=(), body=None, content_type="application/json", timeout=30):
        query = dict(query)
        payload = body if body is None or "json" in content_type else json.dumps(body)
        with self._lock:
            self.requests[method] += 1
            self.log.append((method, path, query))
        status, data = self.fake.answer(method, path, query, payload)
        if not 200 <= status < 300:
            raise ApiError(status, {"reason": REASONS.get(status, ""), **data}, method, path)
        return data


@pytest.fixture
def env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("K3STACK_ENV_DIR", str(tmp_path))
    monkeypatch.delenv("K3STACK_ENV", raising=False)
    monkeypatch.setenv("CI", "false")
    for name, more in (("one", ""), ("two", "STACK_NAMESPACE=llm2\nMONITORING_NAMESPACE=mon2\n")):
        path = tmp_path / f"{name}.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in BASE.items()) + more)
        path.chmod(0o600)
    return tmp_path


def deploy_run(api: FakeApi, monkeypatch, *envs: str, out: io.StringIO | None = None, **options) -> CountingKube:
    """One `inv deploy --env ENV… --no-wait --no-pull` (face.run_deploy) against `api`; its Kube."""
    kube = CountingKube(api)
    monkeypatch.setattr(face, "kube_for", lambda loaded, kubeconfig, context: kube)
    out = Console(stream=out or io.StringIO(), interactive=False)
    options = {"wait": False, "pull": False, **options}
    kube.outcome = face.run_deploy(out, list(envs or ["one"]), None, None, **options)
    return kube


def kinds_in(*names: str) -> set[tuple[str, str]]:
    return {
        (m.obj["apiVersion"], m.kind)
        for name in names
        for m in stack.make_plan(settings.load(name), lambda ns, n: None).manifests
    }


def lists(kube: CountingKube) -> Counter:
    """LIST requests by collection path (a path without a name)."""
    return Counter(
        path
        for method, path, _ in kube.log
        if method == "GET"
        and not path.startswith(("/version", "/apis/apiextensions"))
        and path not in ("/apis", "/api/v1/nodes")  # the discovery pass's
        and FakeApi().where(path)[3] is None
    )


def by_path(kube: CountingKube, method: str) -> Counter:
    return Counter(path for m, path, _ in kube.log if m == method)


def collection(api_version: str, kind: str, namespace: str = "") -> str:
    return kinds.KNOWN[(api_version, kind)].path(namespace or None)


def test_a_no_op_redeploy_costs_one_request_per_object_and_kind_plus_discovery_lock_and_journals(env_dir, monkeypatch):
    api = FakeApi()
    first = deploy_run(api, monkeypatch)
    assert first.outcome.changed
    again = deploy_run(api, monkeypatch)
    report = again.outcome.report
    objects, wanted = len(report.results), kinds_in("one")
    assert {r.action for r in report.results} == {"unchanged"}
    assert not report.pruned
    # The whole run, by verb: an apply (PATCH) per object; a LIST per kind in k8s/ (the Secrets'
    # while planning, reused by the deploy); one discovery pass (4); a LIST per namespace a rotation
    # journal can be in (2); the Lease (a POST to take it, a DELETE to let go: nothing read).
    assert dict(again.requests) == {"PATCH": objects, "GET": len(wanted) + 4 + 2, "POST": 1, "DELETE": 1}
    assert sum(again.requests.values()) - 2 - 4 - 2 <= objects + len(wanted)  # issue 16's target, minus overheads
    assert by_path(again, "GET")["/version"] == by_path(again, "GET")["/apis"] == 1
    assert lists(again) == Counter(
        [collection(*k) for k in wanted]
        + [collection("v1", "Secret", ns) for ns in ("llm-stack", "monitoring")]  # the rotation journals
    )
    assert not [p for m, p, _ in again.log if m == "GET" and "/secrets/" in p]  # no Secret read by name
    assert [q.get("labelSelector") for m, p, q in again.log if p == "/api/v1/secrets"] == [
        apply.instance_selector("llm-stack")
    ]


def test_a_second_no_op_run_writes_nothing_and_keeps_the_record(env_dir, monkeypatch):
    api = FakeApi()
    deploy_run(api, monkeypatch)
    before = copy.deepcopy(api.objects)
    deploy_run(api, monkeypatch)
    versions = {k: o["metadata"]["resourceVersion"] for k, o in before.items()}
    assert not [k for k in before if k[1] == "leases"]  # the lock is let go at the end of each run
    assert {k: o["metadata"]["resourceVersion"] for k, o in api.objects.items()} == versions
    namespace = api.objects[("/api/v1", "namespaces", "", "llm-stack")]
    recorded = apply.recorded_kinds(namespace)
    assert recorded == kinds_in("one") & set(apply.PRUNABLE)
    assert namespace["metadata"]["annotations"][apply.CREATED_BY] == "llm-stack"  # the lock's record kept


def test_several_stacks_list_each_kind_once_and_plan_secrets_with_one_list_each(env_dir, monkeypatch):
    api = FakeApi()
    deploy_run(api, monkeypatch, "one", "two")
    again = deploy_run(api, monkeypatch, "one", "two")
    assert {r.action for r in again.outcome.report.results} == {"unchanged"}
    wanted = kinds_in("one", "two")
    journal_lists = [collection("v1", "Secret", ns) for ns in ("llm-stack", "monitoring", "llm2", "mon2")]
    listed = lists(again)
    assert listed[collection("v1", "Secret")] == 2  # one per stack while planning, none again to deploy
    assert listed == Counter([collection(*k) for k in wanted] * 1 + [collection("v1", "Secret")] + journal_lists)
    assert by_path(again, "GET")["/version"] == 1


def deployed_then_dropped_a_configmap(api: FakeApi, monkeypatch) -> None:
    """Deploy the stack plus a ConfigMap (a prunable kind it has no other of, as k8s/llm-stack/old.yaml
    would render), then take that file out of k8s/ again."""
    meta = {"name": "old", "namespace": "llm-stack", "labels": {mf.MANAGED_BY: mf.MANAGER}}
    extra = mf.Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}, "llm-stack/old.yaml")
    render = mf.render
    monkeypatch.setattr(mf, "render", lambda *a, **kw: [*render(*a, **kw), extra])
    deploy_run(api, monkeypatch)
    assert ("v1", "ConfigMap") in apply.recorded_kinds(api.objects[("/api/v1", "namespaces", "", "llm-stack")])
    monkeypatch.setattr(mf, "render", render)


def test_a_kind_that_left_k8s_is_still_listed_and_pruned_then_forgotten(env_dir, monkeypatch):
    api = FakeApi()
    deployed_then_dropped_a_configmap(api, monkeypatch)
    configmaps = collection("v1", "ConfigMap")
    pruning = deploy_run(api, monkeypatch)
    assert lists(pruning)[configmaps] == 1  # listed because the record names it
    assert [r.describe for r in pruning.outcome.report.pruned] == ["configmap/old"]
    namespace = api.objects[("/api/v1", "namespaces", "", "llm-stack")]
    assert ("v1", "ConfigMap") in apply.recorded_kinds(namespace)  # until a run sees none left

    after = deploy_run(api, monkeypatch)  # the kind is listed once more, found empty, and forgotten:
    assert lists(after)[configmaps] == 1
    assert not after.outcome.report.pruned
    assert after.outcome.report.counts()["configured"] == 1  # the record's one change, on the namespace
    assert ("v1", "ConfigMap") not in apply.recorded_kinds(api.objects[("/api/v1", "namespaces", "", "llm-stack")])
    quiet = deploy_run(api, monkeypatch)
    assert lists(quiet)[configmaps] == 0
    assert not quiet.outcome.changed


def test_no_prune_keeps_the_kind_recorded(env_dir, monkeypatch):
    api = FakeApi()
    deployed_then_dropped_a_configmap(api, monkeypatch)
    for _ in range(2):
        kept = deploy_run(api, monkeypatch, prune=False)
        assert lists(kept)[collection("v1", "ConfigMap")] == 1
    pruning = deploy_run(api, monkeypatch)
    assert [r.describe for r in pruning.outcome.report.pruned] == ["configmap/old"]


def test_a_stack_without_a_record_lists_every_prunable_kind(env_dir, monkeypatch):
    api = FakeApi()
    deploy_run(api, monkeypatch)
    namespace = api.objects[("/api/v1", "namespaces", "", "llm-stack")]
    del namespace["metadata"]["annotations"][apply.KINDS_RECORD]  # deployed by a k3stack before the record
    upgraded = deploy_run(api, monkeypatch)
    served = {k for k in kinds_in("one") | set(apply.PRUNABLE) if k[0] in SERVED}
    assert set(lists(upgraded)) >= {collection(*k) for k in served}
    assert apply.recorded_kinds(api.objects[("/api/v1", "namespaces", "", "llm-stack")]) is not None
    assert lists(deploy_run(api, monkeypatch))[collection("apps/v1", "StatefulSet")] == 0


def test_an_unfinished_rotation_is_found_with_one_list_per_namespace_and_stops_deploy(env_dir, monkeypatch):
    api = FakeApi()
    deploy_run(api, monkeypatch)
    journal = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": rotate.journal_name("NETDATA_PASSWORD"),
            "namespace": "monitoring",
            "labels": {mf.MANAGED_BY: mf.MANAGER},
        },
    }
    api.store(("/api/v1", "secrets", "monitoring", journal["metadata"]["name"]), journal)
    kube = CountingKube(api)
    assert rotate.pending(kube, settings.load("one")) == ["NETDATA_PASSWORD"]
    assert dict(kube.requests) == {"GET": 2}
    said = io.StringIO()
    with pytest.raises(Exit):
        deploy_run(api, monkeypatch, out=said)
    assert "NETDATA_PASSWORD stopped halfway" in said.getvalue()
    assert not [k for k in api.objects if k[1] == "leases"]  # refused, and the lock let go


def test_the_check_before_the_lock_reads_no_secret_and_writes_nothing(env_dir, monkeypatch):
    api = FakeApi(SERVED - {"traefik.io/v1alpha1"})
    kube = CountingKube(api)
    out = Console(stream=io.StringIO(), interactive=False)
    monkeypatch.setattr(sec, "resolve", lambda *a, **kw: pytest.fail("secrets resolved (generated) before the lock"))
    with (
        pytest.raises(stack.ClusterError, match="no Traefik Middleware API"),
        pipeline.locked(kube, [settings.load("one")], out),
    ):
        pass
    assert dict(kube.requests) == {"GET": 4}  # the discovery pass only
    assert api.objects == {}


def test_the_check_renders_what_the_plan_renders_but_the_checksums():
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=BASE)
    computed = sec.resolve(loaded, lambda ns, n: None).checksums
    assert computed
    assert all(name.endswith(stack.CHECKSUM_SUFFIX) for name in computed)
    checked = mf.render(stack._CheckVariables(loaded.render_vars()))
    planned = stack.make_plan(loaded, lambda ns, n: None)
    assert [m.key for m in checked] == [m.key for m in planned.manifests if m.kind != "Secret"]
    with pytest.raises(KeyError):
        stack._CheckVariables({})["DOMAIN"]


def test_one_discovery_pass_per_kube_even_when_asked_at_once():
    kube = CountingKube(FakeApi())
    threads = [threading.Thread(target=kube.discovered) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kube.discovered() is kube.cluster
    assert dict(kube.requests) == {"GET": 4}
    kube.discover()  # asked for explicitly: a fresh pass
    assert dict(kube.requests) == {"GET": 8}


def test_a_cronjob_that_left_k8s_is_pruned_and_its_volume_kept(env_dir, monkeypatch):
    """The backup CronJob is a prunable kind (both batch versions): taken out of k8s/, the next deploy
    deletes it; its PVC (data) stays."""
    assert {("batch/v1", "CronJob"), ("batch/v1beta1", "CronJob")} <= set(apply.PRUNABLE)
    assert "CronJob" not in kinds.WAITED_KINDS  # no rollout to wait for
    api = FakeApi()
    deploy_run(api, monkeypatch)
    render = mf.render
    monkeypatch.setattr(mf, "render", lambda *a, **kw: [m for m in render(*a, **kw) if m.kind != "CronJob"])
    pruning = deploy_run(api, monkeypatch)
    assert [r.describe for r in pruning.outcome.report.pruned] == ["cronjob.batch/postgres-backup"]
    assert ("/apis/batch/v1", "cronjobs", "llm-stack", "postgres-backup") not in api.objects
    assert ("/api/v1", "persistentvolumeclaims", "llm-stack", "postgres-backups") in api.objects
