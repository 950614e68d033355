"""The kube bed behaves like a real cluster where k3stack depends on it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, UnprocessibleEntityError

from .kube import cached_binaries


def wait_for(predicate, timeout: float = 60, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except client.ApiException as exc:
            if exc.status != 404:  # not created yet by its controller: keep waiting
                raise
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {predicate.__doc__ or predicate}")


def raw(response) -> dict:
    return json.loads(response.data)


def deployment(name: str, replicas: int = 1, labels: dict | None = None) -> dict:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": "registry.invalid/app:1.0"}]},
            },
        },
    }


def test_version_is_a_real_api_server(kube):
    assert kube.version.startswith("v1.")
    if kube.sim is not None:
        assert cached_binaries() is not None


def test_deployment_becomes_available(kube, namespace):
    apps = client.AppsV1Api(kube.api())
    apps.create_namespaced_deployment(namespace, deployment("web", replicas=2), _preload_content=False)

    def available():
        status = raw(apps.read_namespaced_deployment("web", namespace, _preload_content=False))["status"]
        return status.get("availableReplicas") == 2 and status.get("updatedReplicas") == 2

    wait_for(available)
    pods = raw(client.CoreV1Api(kube.api()).list_namespaced_pod(namespace, _preload_content=False))["items"]
    assert len(pods) == 2
    assert all(p["status"]["phase"] == "Running" and p["status"]["podIP"] for p in pods)


def test_statefulset_claim_gets_bound(kube, namespace):
    apps, core = client.AppsV1Api(kube.api()), client.CoreV1Api(kube.api())
    labels = {"app": "db"}
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "db",
                                "image": "registry.invalid/db:1.0",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ]
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                    }
                ],
            },
        },
        _preload_content=False,
    )

    def bound():
        claims = raw(core.list_namespaced_persistent_volume_claim(namespace, _preload_content=False))["items"]
        return [c for c in claims if c["metadata"]["name"] == "data-db-0" and c["status"].get("phase") == "Bound"]

    (claim,) = wait_for(bound)

    assert claim["spec"]["storageClassName"] == "local-path"  # the default class, as on K3s
    wait_for(
        lambda: (
            raw(apps.read_namespaced_stateful_set("db", namespace, _preload_content=False))["status"].get(
                "readyReplicas"
            )
            == 1
        )
    )


def test_job_pods_run_to_completion(kube, namespace):
    batch = client.BatchV1Api(kube.api())
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "helm-install-demo"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "helm", "image": "registry.invalid/klipper-helm:1.0"}],
                    }
                },
            },
        },
        _preload_content=False,
    )
    wait_for(
        lambda: (
            raw(batch.read_namespaced_job("helm-install-demo", namespace, _preload_content=False))["status"].get(
                "succeeded"
            )
            == 1
        )
    )


def test_server_side_apply_conflict_between_field_managers(kube, namespace):
    configmaps = DynamicClient(kube.api()).resources.get(api_version="v1", kind="ConfigMap")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": namespace},
        "data": {"mode": "a"},
    }
    configmaps.server_side_apply(body=body, name="settings", namespace=namespace, field_manager="k3stack")
    body["data"]["mode"] = "b"
    with pytest.raises(ConflictError) as conflict:
        configmaps.server_side_apply(body=body, name="settings", namespace=namespace, field_manager="someone-else")
    assert "k3stack" in str(conflict.value.body)
    assert ".data.mode" in str(conflict.value.body)
    forced = configmaps.server_side_apply(
        body=body, name="settings", namespace=namespace, field_manager="someone-else", force_conflicts=True
    )
    assert forced.data.mode == "b"


def test_invalid_object_is_rejected_with_422(kube, namespace):
    core = client.CoreV1Api(kube.api())
    with pytest.raises(client.ApiException) as rejected:
        core.create_namespaced_service(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "Not_A_Valid_Name"},
                "spec": {"ports": [{"port": 80, "protocol": "TCP"}]},
            },
            _preload_content=False,
        )
    assert rejected.value.status == 422
    assert "metadata.name" in rejected.value.body


def test_immutable_field_change_is_rejected(kube, namespace):
    apps = client.AppsV1Api(kube.api())
    apps.create_namespaced_deployment(namespace, deployment("web"), _preload_content=False)
    changed = deployment("web", labels={"app": "other"})
    with pytest.raises(client.ApiException) as rejected:
        apps.replace_namespaced_deployment("web", namespace, changed, _preload_content=False)
    assert rejected.value.status == 422
    assert "field is immutable" in rejected.value.body


def test_helmchart_crd_validates_its_schema(kube, namespace):
    charts = DynamicClient(kube.api()).resources.get(api_version="helm.cattle.io/v1", kind="HelmChart")
    chart = {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChart",
        "metadata": {"name": "netdata"},
        "spec": {
            "repo": "https://charts.invalid",
            "chart": "netdata",
            "version": "3.7.172",
            "failurePolicy": "abort",
            "valuesContent": "a: 1\n",
        },
    }
    created = charts.create(body=chart, namespace=namespace)
    assert created.spec.failurePolicy == "abort"
    chart["metadata"]["name"] = "broken"
    chart["spec"]["failurePolicy"] = "sometimes"
    with pytest.raises(UnprocessibleEntityError, match="failurePolicy"):
        charts.create(body=chart, namespace=namespace)


def test_service_proxy_reaches_a_server_behind_pods(kube, namespace):
    if kube.sim is None:
        pytest.skip("needs the built-in bed's node simulator (K3STACK_TEST_KUBECONFIG is set)")
    sock = kube.serve_behind_pods(namespace, {"app": "echo"}, port=8080)

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):
            payload = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(sock.getsockname(), Echo, bind_and_activate=False)
    server.socket = sock
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client.AppsV1Api(kube.api()).create_namespaced_deployment(
            namespace, deployment("echo", labels={"app": "echo"}), _preload_content=False
        )
        core = client.CoreV1Api(kube.api())
        core.create_namespaced_service(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "echo"},
                "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            },
            _preload_content=False,
        )

        def endpoints_ready():
            subsets = raw(core.read_namespaced_endpoints("echo", namespace, _preload_content=False)).get("subsets")
            return bool(subsets and subsets[0].get("addresses"))

        wait_for(endpoints_ready)
        reply = core.connect_get_namespaced_service_proxy_with_path(
            "echo:80", namespace, "api/version", _preload_content=False
        )
        assert json.loads(reply.data) == {"path": "/api/version"}
    finally:
        server.shutdown()


def test_deleting_a_namespace_finalizes(kube):
    core = client.CoreV1Api(kube.api())
    core.create_namespace({"metadata": {"name": "t-finalize"}}, _preload_content=False)
    client.AppsV1Api(kube.api()).create_namespaced_deployment("t-finalize", deployment("web"), _preload_content=False)
    core.delete_namespace("t-finalize", _preload_content=False)

    def gone():
        try:
            core.read_namespace("t-finalize", _preload_content=False)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=90)
