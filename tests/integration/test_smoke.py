"""`inv smoke`'s checks against the stack deployed to the test bed's real API server with its REAL
components behind the stack's pods (Open WebUI from PyPI at the image's version, PostgreSQL,
Redis, Netdata; see tests/testbed/real/), the Ollama protocol double behind Ollama's Service, and
the Traefik stand-in (tests/testbed/ingress.py) configured from the stack's Ingresses and
Middlewares, on loopback with a test CA's certificate (no DNS: connect_to). Every check is shown
passing, then failing for a real reason: a stopped Redis, a wrong password, a missing middleware."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import uuid

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from junitparser import Failure, JUnitXml
from kubernetes import client

from k3stack import report as rp
from k3stack import smoke as sm
from k3stack.console import Console
from tests.testbed.ingress import TestCA
from tests.testbed.real.plugin import ADMIN_PASSWORD, MODELS, NETDATA_PASSWORD
from tests.testbed.real.stack import CHAT, MONITOR, RealStack

pytestmark = pytest.mark.timeout(600)


@dataclasses.dataclass
class Bed:
    stack: RealStack
    config: sm.SmokeConfig

    @property
    def kube(self):
        return self.stack.kube

    @property
    def sim(self):
        return self.stack.bed.sim

    @property
    def api(self):
        return self.stack.bed.api()

    @property
    def ingress(self):
        return self.stack.ingress

    @property
    def ca(self):
        return self.stack.ca

    def check(self, name: str, config: sm.SmokeConfig | None = None, deadline: float = 1.5) -> rp.CheckResult:
        """Run the one check whose name starts with `name`, briefly retried."""
        checks = [c for c in sm.Checks(self.kube, config or self.config).all() if c.name.startswith(name)]
        assert len(checks) == 1, [c.name for c in sm.Checks(self.kube, self.config).all()]
        return sm.run_checks(checks, deadline=deadline, interval=0.3).results[0]


@pytest.fixture
def bed(real_stack):
    """The session's real stack (no sign-ins counted yet), its certificate restored afterwards."""
    real_stack.forget_signins()
    yield Bed(real_stack, real_stack.smoke_config())
    real_stack.ingress.use_cert(*real_stack.ca.issue([CHAT, MONITOR]))


def test_every_check_passes_on_the_real_stack_and_runs_concurrently(bed, tmp_path):
    out = io.StringIO()
    console = Console(stream=out, interactive=False)
    report = sm.smoke(bed.kube, bed.config, console)
    assert report.ok, [(r.name, r.reason) for r in report.failed]
    # One sign-in shared by the checks that need a token (Open WebUI allows 15 in 3 minutes).
    assert bed.stack.signins() == 1
    details = {r.name: r.detail for r in report.results}
    assert len(details) == 14
    assert details["nodes Ready"].endswith("node(s) Ready")
    assert details["volumes Bound"].endswith("volume(s) Bound")
    assert details["netdata chart installed"].startswith("netdata: chart installed")
    assert details["ollama API"] == "Ollama 0.32.15"
    assert details["ollama models present"] == f"{len(bed.config.models)} model(s) present"  # embedding model too
    assert details["open-webui ready"] == "/ready 200"
    assert details[f"https://{CHAT}/health + certificate"] == (
        "200; certificate by k3stack test CA, expires in 89 days"
    )
    assert details[f"http://{CHAT} redirects to https"] == f"301 → https://{CHAT}/"
    assert details["open-webui version"] == "0.11.0"
    assert details["admin sign-in lists models"] == f"signed in; {len(bed.config.models)} model(s) listed"
    assert details["websocket handshake"] == (
        "websocket upgraded, Socket.IO connected, event back through Redis (upgrades: none)"
    )
    assert details[f"https://{MONITOR} basic auth"] == "401 without credentials, 200 with them"
    # All at once (proven without a clock in tests/unit/test_smoke.py; bench/smoke times it).
    assert report.seconds < sum(r.seconds for r in report.results)

    junit = tmp_path / "smoke.xml"
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    rp.emit(report, console, junit=junit, summary=summary)
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


def test_redis_stopped_fails_the_websocket_check_with_its_hint_everywhere(bed, tmp_path):
    bed.stack.components["redis"].stop()
    try:
        config = dataclasses.replace(bed.config, deadline=1, request_timeout=5)
        report = sm.smoke(bed.kube, config, only=["in-cluster", "public"])
        assert not report.ok
        # Open WebUI needs Redis for sessions too: sign-in (or the model list) and /ready fail with it.
        failed = {r.name: r for r in report.failed}
        assert sorted(failed) == ["admin sign-in lists models", "open-webui ready", "websocket handshake"]
        assert failed["admin sign-in lists models"].reason.endswith(": HTTP 500")
        assert failed["open-webui ready"].reason.startswith("Open WebUI /ready: HTTP 503")
        junit = tmp_path / "smoke.xml"
        rp.emit(report, Console(stream=io.StringIO(), interactive=False), as_json=True, junit=junit)
        [suite] = list(JUnitXml.fromfile(str(junit)))
        assert (suite.tests, suite.failures) == (10, 3)
        [websocket] = [case for case in suite if case.name == "websocket handshake"]
        assert isinstance(websocket.result[0], Failure)
        assert "hint: Open WebUI's websocket manager and sessions need Redis" in websocket.result[0].text
        data = rp.to_json(report)
        assert data["ok"] is False
        assert json.dumps(data)  # serialisable as is
        assert "❌ fail | websocket handshake | public" in rp.markdown(report)
    finally:
        bed.stack.sync()  # the kubelet restarts the container
    assert bed.check("websocket", deadline=30).ok


def test_a_websocket_without_redis_behind_it_fails_after_connecting(bed, monkeypatch):
    """Sign-in done while Redis is up; then Redis goes: the upgrade and Socket.IO connect still
    succeed (Engine.IO is local), the session cannot be stored — the check says so."""
    token = sm.Checks(bed.kube, bed.config)._signin()
    monkeypatch.setattr(sm.Checks, "_signin", lambda self: token)
    bed.stack.components["redis"].stop()
    try:
        result = bed.check("websocket", dataclasses.replace(bed.config, request_timeout=5), deadline=1)
        assert not result.ok
        assert result.reason.startswith("websocket connected (sid ")
        assert result.reason.endswith("but no answer to user-join within 5s")
        assert result.hint.startswith("Open WebUI's websocket manager and sessions need Redis")
    finally:
        bed.stack.sync()
    assert bed.check("websocket", deadline=30).ok


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


def test_open_webui_not_ready_without_its_database(bed):
    bed.stack.components["postgres"].stop()
    try:
        result = bed.check("open-webui ready", deadline=3)
        assert not result.ok
        assert result.reason.startswith("Open WebUI /ready: HTTP 503")
        assert "PostgreSQL or Redis" in result.hint
    finally:
        bed.stack.sync()
    assert bed.check("open-webui ready", deadline=30).ok


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


def pin_staging_roots(monkeypatch, tmp_path, ca: TestCA) -> None:
    """Make `ca` the one pinned staging root: Let's Encrypt's staging key is not ours to sign with, so
    the bed stands in for it the way the test CA stands in for Let's Encrypt's production roots."""
    path = ca.write(tmp_path / "staging-roots.pem")
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    monkeypatch.setattr(sm, "STAGING_ROOTS", path)
    monkeypatch.setattr(sm, "STAGING_ROOT_FINGERPRINTS", {hashlib.sha256(der).hexdigest(): "bed staging root"})


def test_insecure_trusts_the_pinned_staging_roots(bed, monkeypatch, tmp_path):
    staging = TestCA("(STAGING) Pretend Pear X1")
    pin_staging_roots(monkeypatch, tmp_path, staging)
    bed.ingress.use_cert(*staging.issue([CHAT, MONITOR]))
    strict = bed.check(f"https://{CHAT}/health")
    assert not strict.ok
    assert "Traefik still serves a staging certificate" in strict.hint  # ACME_STAGING is off
    strict = bed.check(f"https://{CHAT}/health", dataclasses.replace(bed.config, acme_staging=True))
    assert "pass --insecure" in strict.hint
    insecure = dataclasses.replace(bed.config, insecure=True, ca_bundle=None)
    passed = bed.check(f"https://{CHAT}/health", insecure)
    assert passed.ok, passed.reason
    assert passed.detail == "200; certificate by (STAGING) Pretend Pear X1, expires in 89 days (staging)"
    report = sm.smoke(bed.kube, insecure, only=["public"])
    assert report.ok, [(r.name, r.reason) for r in report.failed]
    assert bed.stack.signins() == 1


@pytest.mark.parametrize("issuer", ["Self Signed Inc", "(STAGING) Bogus Broccoli X2"])
@pytest.mark.parametrize("insecure", [True, False], ids=["insecure", "strict"])
def test_a_certificate_that_does_not_verify_gets_no_credential(bed, issuer, insecure):
    """A self-signed certificate, and one that calls itself Let's Encrypt staging but chains to
    another root: every public check fails, and the ingress saw no request on HTTPS at all — no
    sign-in body, no Authorization header, no websocket upgrade (plain HTTP carries only the
    redirect check's anonymous GET)."""
    bed.ingress.use_cert(*TestCA(issuer).issue([CHAT, MONITOR]))
    bed.ingress.received.clear()
    config = dataclasses.replace(bed.config, deadline=2, **({"insecure": True, "ca_bundle": None} if insecure else {}))
    report = sm.smoke(bed.kube, config, only=["public"])
    failed = {r.name: r for r in report.failed}
    assert sorted(failed) == sorted(
        [
            f"https://{CHAT}/health + certificate",
            "open-webui version",
            "admin sign-in lists models",
            "websocket handshake",
            f"https://{MONITOR} basic auth",
        ]
    )
    received = list(bed.ingress.received)
    assert [(r.entrypoint, r.method, r.path) for r in received] == [("web", "GET", "/")] * len(received)
    assert received, "the redirect check reached the ingress: the recording works"
    assert not any(r.authorization for r in received)
    assert not any(ADMIN_PASSWORD.encode() in r.body or NETDATA_PASSWORD.encode() in r.body for r in received)
    assert bed.stack.signins() == 0
    signin = failed["admin sign-in lists models"]
    if insecure:
        assert signin.reason.startswith("--insecure accepts only certificates of the Let's Encrypt staging CA")
        assert all(r.attempts == 1 for r in failed.values())  # final: retrying cannot make it chain
        if issuer.startswith("(STAGING)"):
            assert signin.hint.startswith("the certificate only calls itself (STAGING)")
    else:
        assert signin.reason.startswith(f"certificate for {CHAT} not valid: self-signed certificate in")


def test_plain_http_without_a_redirect_fails(bed):
    ns = bed.config.stack_namespace
    middleware = bed.kube.get("traefik.io/v1alpha1", "Middleware", "redirect-https", ns)
    bed.kube.delete("traefik.io/v1alpha1", "Middleware", "redirect-https", ns)
    try:
        result = bed.check(f"http://{CHAT}")
        assert not result.ok
        assert result.reason == "plain HTTP answered 404 without a redirect to HTTPS"
    finally:
        bed.stack.deploy()
    assert middleware is not None
    assert bed.check(f"http://{CHAT}").ok


def test_a_different_open_webui_version_fails(bed):
    result = bed.check("open-webui version", dataclasses.replace(bed.config, webui_version="v0.10.2"))
    assert not result.ok
    assert result.reason == "Open WebUI says version 0.11.0 (HTTP 200), deployed tag is v0.10.2"


def test_a_model_open_webui_does_not_list_fails(bed):
    result = bed.check("admin sign-in", dataclasses.replace(bed.config, models=(*MODELS, "phi3:mini")))
    assert not result.ok
    assert result.reason == f"Open WebUI does not list phi3:mini ({len(bed.config.models)} listed)"  # all it has


def test_a_refused_admin_password_fails_at_once(bed):
    wrong = dataclasses.replace(bed.config, admin_password="not-the-admins-one")
    result = bed.check("admin sign-in", wrong, deadline=3)
    assert not result.ok
    assert result.attempts == 1
    assert result.reason == "admin sign-in as admin@smoke.test refused: HTTP 400"
    assert "WEBUI_ADMIN_PASSWORD" in result.hint
    assert "not-the-admins-one" not in result.reason + result.hint


def test_the_websocket_check_fails_when_the_token_is_refused(bed, monkeypatch):
    monkeypatch.setattr(sm.Checks, "_signin", lambda self: "not-a-token")
    result = bed.check("websocket", deadline=3)
    assert not result.ok
    assert result.reason.startswith("Open WebUI refused the signed-in token on the websocket (user-join answered")
    assert "WEBUI_SECRET_KEY" in result.hint


def test_netdata_open_without_credentials_fails_at_once(bed):
    ns = bed.config.monitoring_namespace
    chart = bed.kube.get("helm.cattle.io/v1", "HelmChart", "netdata", ns)
    values = yaml.safe_load(chart["spec"]["valuesContent"])
    annotations = values["ingress"]["annotations"]
    assert annotations.pop("traefik.ingress.kubernetes.io/router.middlewares") == f"{ns}-netdata-auth@kubernetescrd"
    bed.kube.apply(  # what a hand edit of the chart's values (or a chart default) would do
        {
            "apiVersion": "helm.cattle.io/v1",
            "kind": "HelmChart",
            "metadata": {"name": "netdata", "namespace": ns},
            "spec": {"valuesContent": yaml.safe_dump(values)},
        },
        field_manager="k3stack",
        force=True,
    )
    try:
        result = bed.check(f"https://{MONITOR}", deadline=3)
        assert not result.ok
        assert result.attempts == 1
        assert result.reason == "Netdata answered 200 without credentials (expected 401)"
    finally:
        bed.stack.deploy()
    assert bed.check(f"https://{MONITOR}").ok


def test_netdata_refusing_the_configured_credentials_fails(bed):
    result = bed.check(f"https://{MONITOR}", dataclasses.replace(bed.config, netdata_password="another-password"))
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
