"""`inv smoke`'s checks against a deployed stack on the test bed's real API server: Ollama and Open
WebUI are test servers behind the stack's own Services (reached through the service proxy), the
public URLs go to a TLS "ingress" on loopback (certificates from a test CA; no DNS: connect_to).
Every check is shown passing, then failing for the reason it exists."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid

import pytest
from junitparser import Failure, JUnitXml
from kubernetes import client

from k3stack import report as rp
from k3stack import smoke as sm
from k3stack.console import Console
from k3stack.kube import Kube
from tests.testbed.fake_webui import FakeStack, TestCA

pytestmark = pytest.mark.timeout(300)

MODELS = ["llama3.1:8b", "mistral:7b"]
ADMIN_PASSWORD = "admin-password-for-smoke"
NETDATA_PASSWORD = "netdata-password-for-smoke"
CHAT, MONITOR = FakeStack.CHAT, FakeStack.MONITOR


@dataclasses.dataclass
class Bed:
    stack: FakeStack
    kube: Kube
    config: sm.SmokeConfig
    sim: object
    api: object

    def __getattr__(self, name: str):
        return getattr(self.stack, name)  # ollama, webui, netdata, ingress, ca

    def check(self, name: str, config: sm.SmokeConfig | None = None, deadline: float = 0.6) -> rp.CheckResult:
        """Run the one check whose name starts with `name`, briefly retried."""
        checks = [c for c in sm.Checks(self.kube, config or self.config).all() if c.name.startswith(name)]
        assert len(checks) == 1, [c.name for c in sm.Checks(self.kube, self.config).all()]
        return sm.run_checks(checks, deadline=deadline, interval=0.2).results[0]


@pytest.fixture(scope="module")
def smoke_bed(kube, tmp_path_factory):
    fake = FakeStack.deploy(
        kube,
        tmp_path_factory.mktemp("smoke"),
        models=MODELS,
        admin_password=ADMIN_PASSWORD,
        netdata_password=NETDATA_PASSWORD,
    )
    yield Bed(fake, fake.kube, fake.config, kube.sim, kube.api())
    fake.close()


@pytest.fixture
def bed(smoke_bed):
    """The module's bed with every fault cleared afterwards."""
    saved = {fake: dict(vars(fake)) for fake in (smoke_bed.webui, smoke_bed.netdata, smoke_bed.ingress.redirect)}
    yield smoke_bed
    for fake, state in saved.items():
        vars(fake).update(state)
    smoke_bed.ingress.use_cert(*smoke_bed.ca.issue([CHAT, MONITOR]))


def test_every_check_passes_on_a_healthy_stack_and_runs_concurrently(bed, tmp_path):
    bed.webui.latency = {"/api/version": 0.5}
    out = io.StringIO()
    console = Console(stream=out, interactive=False)
    report = sm.smoke(bed.kube, bed.config, console)
    assert report.ok, [(r.name, r.reason) for r in report.failed]
    details = {r.name: r.detail for r in report.results}
    assert len(details) == 14
    assert details["nodes Ready"].endswith("node(s) Ready")
    assert details["volumes Bound"] == "4 volume(s) Bound"
    assert details["netdata chart installed"].startswith("netdata: chart installed")
    assert details["ollama API"] == "Ollama 0.32.15"
    assert details["ollama models present"] == "2 model(s) present"
    assert details["open-webui ready"] == "/ready 200"
    assert details[f"https://{CHAT}/health + certificate"] == (
        "200; certificate by k3stack test CA, expires in 89 days"
    )
    assert details[f"http://{CHAT} redirects to https"] == f"308 → https://{CHAT}:{bed.ingress.https_port}/"
    assert details["open-webui version"] == "0.11.0"
    assert details["admin sign-in lists models"] == "signed in; 2 model(s) listed"
    assert details["websocket handshake"] == "Engine.IO handshake, upgrades: websocket"
    assert details[f"https://{MONITOR} basic auth"] == "401 without credentials, 200 with them"
    # All at once (proven without a clock in tests/unit/test_smoke.py; bench/smoke times it).
    assert report.seconds < sum(r.seconds for r in report.results)

    junit = tmp_path / "smoke.xml"
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    rp.emit(report, console, junit=junit, environ={"GITHUB_STEP_SUMMARY": str(summary)})
    cases = [case for suite in JUnitXml.fromfile(str(junit)) for case in suite]
    assert len(cases) == 14
    assert all(case.is_passed for case in cases)
    text = summary.read_text()
    assert text.startswith("earlier step\n### ✅ smoke: all 14 checks passed in ")
    assert sum(1 for line in text.splitlines() if line.startswith("| ✅ pass |")) == 14
    printed = out.getvalue()
    assert "smoke: all 14 checks passed in " in printed
    assert "│ pass   │ nodes Ready " in printed
    assert "FAIL" not in printed
    for secret in (ADMIN_PASSWORD, NETDATA_PASSWORD):
        assert secret not in printed
        assert secret not in junit.read_text()


def test_a_failing_run_is_not_ok_and_reports_reason_and_hint_everywhere(bed, tmp_path):
    bed.webui.websocket = False
    config = dataclasses.replace(bed.config, deadline=0.8)
    report = sm.smoke(bed.kube, config, only=["public"])
    assert not report.ok
    assert [r.name for r in report.failed] == ["websocket handshake"]
    junit = tmp_path / "smoke.xml"
    rp.emit(report, Console(stream=io.StringIO(), interactive=False), as_json=True, junit=junit, environ={})
    [suite] = list(JUnitXml.fromfile(str(junit)))
    assert (suite.tests, suite.failures) == (6, 1)
    [failed] = [case for case in suite if not case.is_passed]
    assert failed.name == "websocket handshake"
    assert isinstance(failed.result[0], Failure)
    assert "HTTP 403" in failed.result[0].message
    assert "hint: ENABLE_WEBSOCKET_SUPPORT=true" in failed.result[0].text
    data = rp.to_json(report)
    assert data["ok"] is False
    assert json.dumps(data)  # serialisable as is
    assert "❌ fail | websocket handshake | public" in rp.markdown(report)


# -- cluster checks ------------------------------------------------------------------------------
def test_a_node_not_ready_fails(bed):
    name = f"t-notready-{uuid.uuid4().hex[:4]}"
    bed.kube.apply(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"unschedulable": True}},
        field_manager="test",
    )
    try:
        client.CoreV1Api(bed.api).patch_node_status(
            name,
            {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}},
            _preload_content=False,
        )
        result = bed.check("nodes Ready")
        assert not result.ok
        assert f"not Ready: {name} (KubeletNotReady)" in result.reason
        assert "kubectl describe node" in result.hint
    finally:
        bed.kube.delete("v1", "Node", name)
    assert bed.check("nodes Ready").ok


def test_a_workload_that_does_not_become_available_fails(bed):
    ns = bed.config.stack_namespace
    labels = {"app.kubernetes.io/name": "crasher"}
    bed.sim.fail(ns, labels, "exec format error")
    bed.kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "crasher", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}},
            },
        },
        field_manager="test",
    )
    try:
        result = bed.check("workloads available", deadline=2)
        assert not result.ok
        assert f"deployment/crasher ({ns}): 0 of 1 updated replicas are available" in result.reason
        assert result.attempts > 1  # eventually consistent: retried until the deadline
    finally:
        bed.kube.delete("apps/v1", "Deployment", "crasher", ns)


def test_a_volume_not_bound_fails(bed):
    ns = bed.config.stack_namespace
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "orphan", "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-path",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    bed.kube.apply(claim, field_manager="test")
    try:
        result = bed.check("volumes Bound")
        assert not result.ok
        assert result.reason == f"not Bound: orphan ({ns}) Pending"
    finally:
        bed.kube.delete("v1", "PersistentVolumeClaim", "orphan", ns)


def test_a_failed_chart_install_fails_at_once(bed):
    ns = bed.config.monitoring_namespace
    bed.kube.apply(
        {
            "apiVersion": "helm.cattle.io/v1",
            "kind": "HelmChart",
            "metadata": {"name": "broken", "namespace": ns},
            "spec": {"chart": "broken", "repo": "https://charts.example.test/", "version": "1.0.0"},
        },
        field_manager="test",
    )
    try:
        client.CustomObjectsApi(bed.api).patch_namespaced_custom_object_status(
            "helm.cattle.io",
            "v1",
            ns,
            "helmcharts",
            "broken",
            {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "chart not found"}]}},
            _preload_content=False,
        )
        result = bed.check("netdata chart installed", deadline=3)
        assert not result.ok
        assert "broken: helm chart failed: chart not found" in result.reason
        assert result.attempts == 1  # failurePolicy abort: retrying cannot help
    finally:
        bed.kube.delete("helm.cattle.io/v1", "HelmChart", "broken", ns)


# -- in-cluster checks ---------------------------------------------------------------------------
def test_ollama_unreachable_fails(bed):
    result = bed.check("ollama API", dataclasses.replace(bed.config, ollama_service=("ollama-gone", 11434)))
    assert not result.ok
    assert result.reason.startswith("Ollama /api/version: HTTP 404")


def test_a_configured_model_missing_from_ollama_fails(bed):
    result = bed.check("ollama models", dataclasses.replace(bed.config, models=(*MODELS, "phi3:mini")))
    assert not result.ok
    assert result.reason == "not on Ollama's volume: phi3:mini"
    assert "inv models.pull" in result.hint


def test_open_webui_without_endpoints_fails_health(bed):
    ns = bed.config.stack_namespace
    bed.kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "webui-nobody", "namespace": ns},
            "spec": {
                "selector": {"app": "nobody"},
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            },
        },
        field_manager="test",
    )
    result = bed.check("open-webui /health", dataclasses.replace(bed.config, webui_service=("webui-nobody", 8080)))
    assert not result.ok
    assert result.reason.startswith("Open WebUI /health: HTTP 503")
    assert "no endpoints available" in result.reason


def test_open_webui_ready_falls_back_to_health_db_and_fails_without_database(bed):
    bed.webui.has_ready = False
    assert bed.check("open-webui ready").detail == "/health/db 200"
    bed.webui.db_ok = False
    result = bed.check("open-webui ready")
    assert not result.ok
    assert result.reason == "Open WebUI /health/db: HTTP 500 database unreachable"


# -- public checks -------------------------------------------------------------------------------
def test_a_certificate_from_an_untrusted_ca_fails_and_says_whose_it_is(bed):
    bed.ingress.use_cert(*TestCA("Evil Proxy CA").issue([CHAT, MONITOR]))
    result = bed.check(f"https://{CHAT}/health")
    assert not result.ok
    assert result.reason.startswith(f"certificate for {CHAT} not valid: self-signed certificate in certificate chain")
    assert f"(issuer Evil Proxy CA, for {CHAT}, {MONITOR})" in result.reason


def test_a_certificate_for_another_host_or_expired_fails(bed):
    bed.ingress.use_cert(*bed.ca.issue(["other.smoke.test"]))
    result = bed.check(f"https://{CHAT}/health")
    assert not result.ok
    assert "Hostname mismatch" in result.reason
    bed.ingress.use_cert(*bed.ca.issue([CHAT, MONITOR], expired=True))
    result = bed.check(f"https://{CHAT}/health")
    assert not result.ok
    assert "certificate has expired" in result.reason


def test_insecure_accepts_the_staging_ca_only(bed):
    staging = TestCA("(STAGING) Ersatz Edamame E1")
    bed.ingress.use_cert(*staging.issue([CHAT, MONITOR]))
    strict = bed.check(f"https://{CHAT}/health")
    assert not strict.ok
    assert "Traefik still serves a staging certificate" in strict.hint  # ACME_STAGING is off
    strict = bed.check(f"https://{CHAT}/health", dataclasses.replace(bed.config, acme_staging=True))
    assert "pass --insecure" in strict.hint
    insecure = dataclasses.replace(bed.config, insecure=True)
    passed = bed.check(f"https://{CHAT}/health", insecure)
    assert passed.ok, passed.reason
    assert passed.detail.endswith("(staging)")
    assert "certificate by (STAGING) Ersatz Edamame E1" in passed.detail

    bed.ingress.use_cert(*TestCA("Self Signed Inc").issue([CHAT, MONITOR]))
    refused = bed.check(f"https://{CHAT}/health", insecure, deadline=3)
    assert not refused.ok
    assert refused.attempts == 1
    assert refused.reason.startswith("--insecure accepts only certificates of the Let's Encrypt staging CA")


def test_plain_http_without_a_redirect_fails(bed):
    bed.ingress.redirect.redirect = False
    result = bed.check(f"http://{CHAT}")
    assert not result.ok
    assert result.reason == "plain HTTP answered 200 without a redirect to HTTPS"


def test_a_different_open_webui_version_fails(bed):
    bed.webui.version = "0.10.2"
    result = bed.check("open-webui version")
    assert not result.ok
    assert result.reason == "Open WebUI says version 0.10.2 (HTTP 200), deployed tag is v0.11.0"


def test_a_model_open_webui_does_not_list_fails(bed):
    bed.webui.models = ["llama3.1:8b"]
    result = bed.check("admin sign-in")
    assert not result.ok
    assert result.reason == "Open WebUI does not list mistral:7b (1 listed)"


def test_a_refused_admin_password_fails_at_once(bed):
    bed.webui.password = "the-one-in-the-database"
    result = bed.check("admin sign-in", deadline=3)
    assert not result.ok
    assert result.attempts == 1
    assert result.reason == "admin sign-in as admin@smoke.test refused: HTTP 400"
    assert ADMIN_PASSWORD not in result.reason + result.hint


def test_websocket_refused_fails(bed):
    bed.webui.websocket = False
    result = bed.check("websocket")
    assert not result.ok
    assert result.reason.startswith("no Engine.IO handshake on /ws/socket.io/: HTTP 403")


def test_netdata_open_without_credentials_fails_at_once(bed):
    bed.netdata.require_auth = False
    result = bed.check(f"https://{MONITOR}", deadline=3)
    assert not result.ok
    assert result.attempts == 1
    assert result.reason == "Netdata answered 200 without credentials (expected 401)"


def test_netdata_refusing_the_configured_credentials_fails(bed):
    bed.netdata.password = "another-password"
    result = bed.check(f"https://{MONITOR}")
    assert not result.ok
    assert result.reason == "Netdata answered 401 with the credentials of admin (expected 200)"


def test_an_unreachable_ingress_fails_with_a_dns_hint(bed):
    config = dataclasses.replace(bed.config, connect_to={(CHAT, 443): ("127.0.0.1", 9)})
    started = time.monotonic()
    result = bed.check(f"https://{CHAT}/health", config)
    assert not result.ok
    assert "Connection refused" in result.reason
    assert f"--resolve {CHAT}:443:ADDRESS" in result.hint
    assert time.monotonic() - started < 3
