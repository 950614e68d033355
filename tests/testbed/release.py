"""What `helm install/upgrade/uninstall` does to the cluster, for the simulated helm-controller
(nodesim.py): no helm runs in the bed, so a release is the objects a chart makes from its values,
recorded in a ConfigMap (helm keeps a release Secret) so an upgrade removes what the new values no
longer make and an uninstall removes everything the release made -- its PVCs included.

Only the Netdata chart (netdata/helmchart 3.7.x) makes objects here, from the values that matter
for data: the parent and k8s-state Deployments with the volumes the values give them, and the
claims the chart makes itself when persistence is on (parent-database, parent-alarms,
k8s-state-varlib). Helm semantics kept: an upgrade skips deleting an object whose LIVE
annotation says `helm.sh/resource-policy: keep`; an uninstall deletes the release's objects."""

from __future__ import annotations

import json
import re

import yaml
from kubernetes import client

from .rest import call

RECORD = "testbed-helm-release-{name}"
KEEP = "helm.sh/resource-policy"
DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))+$")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration(text: str) -> str | None:
    """Go's time.Duration String() of a duration helm/Kubernetes would parse, else None."""
    text = str(text).strip()
    if not DURATION.match(text):
        return None
    seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text))
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def timeout_env(value, bug: bool) -> str | None:
    """The Job's TIMEOUT as a helm-controller renders spec.timeout: before the fix (v0.11/v0.12)
    Go's %s of a *metav1.Duration -- `&Duration{Duration:10m0s,}` -- else the duration itself."""
    if value in (None, ""):
        return None
    parsed = go_duration(value) or str(value)
    return f"&Duration{{Duration:{parsed},}}" if bug else parsed


def timeout_error(timeout: str | None) -> str | None:
    """helm's answer to `--timeout $TIMEOUT`."""
    if timeout is None or go_duration(timeout) is not None:
        return None
    return f'Error: invalid argument "{timeout}" for "--timeout" flag: time: invalid duration "{timeout}"'


def _values(chart: dict) -> dict:
    try:
        values = yaml.safe_load((chart.get("spec") or {}).get("valuesContent") or "") or {}
    except yaml.YAMLError:
        return {}
    return values if isinstance(values, dict) else {}


def _get(values: dict, path: str, default):
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            return default
        node = node[part]
    return node


def objects(chart: dict) -> list[dict]:
    """The objects the chart makes from the HelmChart's values (only Netdata's make any)."""
    spec = chart.get("spec") or {}
    if spec.get("chart") != "netdata":
        return []
    name = chart["metadata"]["name"]
    namespace = spec.get("targetNamespace") or chart["metadata"]["namespace"]
    values = _values(chart)
    labels = {"app": "netdata", "release": name, "heritage": "Helm", "chart": f"netdata-{spec.get('version', '')}"}
    made: list[dict] = []

    def claim(claim_name: str, role: str, storage_class, size) -> dict:
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "namespace": namespace, "labels": {**labels, "role": role}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": str(size)}}},
        }
        if storage_class not in (None, "-"):
            body["spec"]["storageClassName"] = str(storage_class)
        return body

    def workload(component: str, role: str, volumes: list[dict], mounts: list[dict]) -> dict:
        selector = {"app": "netdata", "release": name, "role": role}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"netdata-{component}", "namespace": namespace, "labels": {**labels, "role": role}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {
                        "containers": [{"name": "netdata", "image": "netdata/netdata:v2.11.0", "volumeMounts": mounts}],
                        "volumes": volumes,
                    },
                },
            },
        }

    if _get(values, "parent.enabled", True):
        volumes, mounts = [], []
        for part, path, size in (("database", "/var/cache/netdata", "5Gi"), ("alarms", "/var/lib/netdata", "1Gi")):
            if _get(values, f"parent.{part}.persistence", True):
                claim_name = f"netdata-parent-{part}"
                made.append(
                    claim(
                        claim_name,
                        "parent",
                        _get(values, f"parent.{part}.storageclass", "-"),
                        _get(values, f"parent.{part}.volumesize", size),
                    )
                )
                volumes.append({"name": part, "persistentVolumeClaim": {"claimName": claim_name}})
                mounts.append({"name": part, "mountPath": path})
        volumes += _get(values, "parent.extraVolumes", [])
        mounts += _get(values, "parent.extraVolumeMounts", [])
        made.append(workload("parent", "parent", volumes, mounts))
    if _get(values, "k8sState.enabled", True):
        volumes, mounts = [], []
        if _get(values, "k8sState.persistence.enabled", True):
            made.append(
                claim(
                    "netdata-k8s-state-varlib",
                    "k8sState",
                    _get(values, "k8sState.persistence.storageclass", "-"),
                    _get(values, "k8sState.persistence.volumesize", "1Gi"),
                )
            )
            volumes.append({"name": "varlib", "persistentVolumeClaim": {"claimName": "netdata-k8s-state-varlib"}})
            mounts.append({"name": "varlib", "mountPath": "/var/lib/netdata"})
        volumes += _get(values, "k8sState.extraVolumes", [])
        mounts += _get(values, "k8sState.extraVolumeMounts", [])
        made.append(workload("k8s-state", "k8sState", volumes, mounts))
    return made


def _path(obj: dict) -> str:
    kind, meta = obj["kind"], obj["metadata"]
    base = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
    plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "Deployment": "deployments"}[kind]
    return f"{base}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"


def _record(api: client.ApiClient, chart: dict) -> tuple[str, str, dict | None]:
    spec = chart.get("spec") or {}
    namespace = spec.get("targetNamespace") or chart["metadata"]["namespace"]
    name = RECORD.format(name=chart["metadata"]["name"])
    status, found = call(api, "GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    return namespace, name, found if status == 200 else None


def install(api: client.ApiClient, chart: dict, stamp: dict) -> None:
    """helm upgrade --install: make the chart's objects, remove what the release no longer makes."""
    namespace, name, record = _record(api, chart)
    digest = json.dumps(stamp, sort_keys=True)
    if record is not None and record.get("data", {}).get("stamp") == digest:
        return
    made = objects(chart)
    for obj in made:
        status, _ = call(api, "POST", _path(obj).rsplit("/", 1)[0], obj)
        if status == 409 and obj["kind"] == "Deployment":
            _, live = call(api, "GET", _path(obj))
            live["spec"]["template"] = obj["spec"]["template"]
            call(api, "PUT", _path(obj), live)
    before = json.loads((record or {}).get("data", {}).get("objects") or "[]")
    now = [[o["apiVersion"], o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]] for o in made]
    for api_version, kind, ns, obj_name in before:
        if [api_version, kind, ns, obj_name] in now:
            continue
        path = _path({"apiVersion": api_version, "kind": kind, "metadata": {"namespace": ns, "name": obj_name}})
        status, live = call(api, "GET", path)
        if status == 200 and (live["metadata"].get("annotations") or {}).get(KEEP) == "keep":
            continue  # helm upgrade keeps a resource annotated keep
        call(api, "DELETE", path)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"stamp": digest, "objects": json.dumps(now)},
    }
    if record is None:
        call(api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
    else:
        body["metadata"]["resourceVersion"] = record["metadata"]["resourceVersion"]
        call(api, "PUT", f"/api/v1/namespaces/{namespace}/configmaps/{name}", body)


def uninstall(api: client.ApiClient, chart: dict) -> None:
    """helm uninstall: every object of the release goes (its PVCs too), then the record."""
    namespace, name, record = _record(api, chart)
    if record is None:
        return
    for api_version, kind, ns, obj_name in json.loads(record.get("data", {}).get("objects") or "[]"):
        path = _path({"apiVersion": api_version, "kind": kind, "metadata": {"namespace": ns, "name": obj_name}})
        call(api, "DELETE", path)  # a 404 (already gone) is fine
    call(api, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
