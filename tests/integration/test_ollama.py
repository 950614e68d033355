"""Model pulls against the test Ollama, reached as production reaches Ollama: through the test
bed's real API server's service proxy, to a Service whose pod IP is the test server's address.
The test Ollama speaks Ollama 0.32's protocol with its quirks (tests/testbed/fake_ollama.py); each
quirk has a test here that the pull code must get right."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import pytest

from k3stack import deploy, pipeline, settings
from k3stack import ollama as ol
from k3stack.console import Console
from k3stack.kube import Kube
from tests.testbed.fake_ollama import MLX_ERROR, NOT_FOUND, FakeOllama, JsonHandler, serve

pytestmark = pytest.mark.timeout(180)

MB = 1_000_000
HF = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
MLX = "qwen3.6:27b-nvfp4"  # safetensors only: needs MLX, which Ollama on Linux does not have
LIBRARY = {
    "llama3.1:8b": [3 * MB, 2 * MB, 1000],
    "mistral:7b": [4 * MB, 500],
    "tinyllama": [1 * MB],
    HF: [800_000],
    MLX: [2 * MB],
}


def service_behind(kube_client: Kube, namespace: str, name: str, port: int) -> None:
    """A Service and a one-pod Deployment named `name`, as k8s/ declares Ollama's, and wait until
    the Service has a ready endpoint."""
    labels = {"app.kubernetes.io/name": name}
    kube_client.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        field_manager="test",
    )
    kube_client.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": name,
                                "image": f"example.test/{name}:1",
                                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                            }
                        ]
                    },
                },
            },
        },
        field_manager="test",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        endpoints = kube_client.get("v1", "Endpoints", name, namespace) or {}
        if any(s.get("addresses") for s in endpoints.get("subsets") or []):
            return
        time.sleep(0.2)
    raise AssertionError(f"service {name} in {namespace} got no ready endpoint")


@pytest.fixture(scope="module")
def bed(kube):
    """One namespace with Service `ollama` in front of the test Ollama, for the whole module."""
    kube_client = Kube(str(kube.kubeconfig))
    namespace = f"t-ollama-{uuid.uuid4().hex[:6]}"
    kube_client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, field_manager="test")
    fake = FakeOllama(LIBRARY, rate=20 * MB, tick=0.02, mlx={MLX})
    server = fake.serve(kube.serve_behind_pods(namespace, {"app.kubernetes.io/name": "ollama"}, 11434))
    service_behind(kube_client, namespace, "ollama", 11434)
    yield kube_client, namespace, fake
    server.shutdown()
    kube_client.delete("v1", "Namespace", namespace)


@pytest.fixture
def ollama(bed):
    """A fresh test Ollama (nothing pulled, no faults) and a client with short stall/backoff."""
    kube_client, namespace, fake = bed
    fake.reset()
    fake.rate, fake.tick = 20 * MB, 0.02
    pauses: list[float] = []
    # A generous stall limit (a loaded CI machine pauses streams too); the stall test sets its own.
    client = ol.Ollama(kube_client, namespace, stall_seconds=5, attempts=3, backoff=0.5, sleep=pauses.append)
    client.pauses = pauses
    return client, fake


def test_pull_streams_progress_per_blob_and_verifies(ollama):
    client, fake = ollama
    events: list[ol.Progress] = []
    result = client.pull("llama3.1:8b", events.append)
    assert result.action == "pulled", result.error
    assert fake.pull_requests == ["llama3.1:8b"]
    # The size /api/tags lists: the layers AND the config blob, each pulled with its own line.
    assert result.size == fake.size("llama3.1:8b") == 5 * MB + 1000 + 487
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-2:] == ["success", "success"]  # Ollama's last line, then the verified result
    assert "verifying sha256 digest" in statuses
    config = fake.blobs_of("llama3.1:8b")[-1]
    assert f"pulling {config.digest[7:19]}" in statuses
    downloading = [e for e in events if e.status.startswith("pulling ") and e.total]
    assert len(downloading) > 10  # progress arrives as it streams, not in one piece
    completed = [e.completed for e in downloading]
    assert completed == sorted(completed)
    assert (events[-1].completed, events[-1].total) == (result.size, result.size)
    assert [m.name for m in client.models()] == ["llama3.1:8b"]


def test_zero_fields_are_left_out_of_the_stream(ollama):
    client, fake = ollama
    assert client.pull("tinyllama").ok
    # What went over the wire, as Go's encoder writes api.ProgressResponse (omitempty).
    assert fake.lines[0] == {"status": "pulling manifest"}
    first = next(line for line in fake.lines if "digest" in line)
    assert "completed" not in first  # before the first byte
    assert first["total"] == 1 * MB
    assert fake.lines[-1] == {"status": "success"}


def test_models_already_present_are_skipped_whatever_form_their_name_has(ollama):
    client, fake = ollama
    fake.install("tinyllama")
    wanted = ["tinyllama", "library/TinyLlama:latest", "registry.ollama.ai/library/mistral:7b"]
    report = client.pull_all(wanted)
    assert [(r.model, r.action) for r in report.results] == [("tinyllama:latest", "present"), ("mistral:7b", "pulled")]
    # The present model is never requested; the other goes to Ollama as written, and is found in
    # /api/tags by the short form Ollama lists.
    assert set(fake.pull_requests) == {"registry.ollama.ai/library/mistral:7b"}
    assert [m["name"] for m in fake.tags()["models"]] == ["mistral:7b", "tinyllama:latest"]
    assert report.ok


def test_a_hugging_face_model_keeps_its_name_and_case(ollama):
    client, fake = ollama
    result = client.pull(HF)
    assert (result.model, result.action) == (HF, "pulled")
    assert [m.name for m in client.models()] == [HF]
    again = client.pull_all([HF.lower()])  # Ollama compares names ignoring case
    assert [(r.model, r.action) for r in again.results] == [(HF.lower(), "present")]
    assert fake.pull_requests == [HF]


def test_a_stalled_pull_repeating_its_progress_is_dropped_and_resumed(ollama):
    client, fake = ollama
    first_layer = fake.library["llama3.1:8b"][0]
    fake.stall_once("llama3.1:8b", after_bytes=first_layer.size + MB)  # mid second layer
    client.stall_seconds = 1.0
    events: list[ol.Progress] = []
    started = time.monotonic()
    result = client.pull("llama3.1:8b", events.append)
    assert result.action == "pulled", result.error
    assert time.monotonic() - started < 10  # the stall was detected (1 s), not waited out (30 s)
    assert fake.pull_requests == ["llama3.1:8b", "llama3.1:8b"]
    assert 0.5 <= client.pauses[0] <= 1.0  # the policy's first pause: backoff plus jitter
    retries = [e.status for e in events if e.status.startswith("retrying in ")]
    assert any("no new bytes for 1s" in r for r in retries), retries  # (once seen failing on a loaded machine)
    # Ollama kept talking while stalled: the same line, many times (a watchdog reset by lines
    # would never fire).
    first_try = [e for e in events if e.attempt == 1 and e.status.startswith("pulling ") and e.total]
    stalled_at = first_try[-1].completed
    assert sum(e.completed == stalled_at for e in first_try) > 20
    # Every byte crossed the wire once: the finished layer was not sent again, the partial one
    # continued where it stopped.
    for blob in fake.blobs_of("llama3.1:8b"):
        assert fake.sent[blob.digest] == blob.size


def test_a_stall_shorter_than_the_limit_is_ridden_out(ollama):
    client, fake = ollama
    fake.stall_once("mistral:7b", after_bytes=MB, seconds=0.6)
    client.stall_seconds = 3.0
    result = client.pull("mistral:7b")
    assert (result.action, fake.pull_requests) == ("pulled", ["mistral:7b"])


def test_an_error_line_fails_the_attempt_with_ollamas_message(ollama):
    client, fake = ollama
    fake.fail("mistral:7b", "max retries exceeded: connection reset by peer", after_bytes=MB, times=3)
    result = client.pull("mistral:7b")
    assert result.action == "failed"
    assert fake.pull_requests == ["mistral:7b"] * 3
    assert result.error == "mistral:7b: Ollama: max retries exceeded: connection reset by peer"
    assert "mistral:7b" not in {m.name for m in client.models()}


def test_an_error_line_once_is_retried_and_resumes(ollama):
    client, fake = ollama
    fake.fail("mistral:7b", "max retries exceeded: EOF", after_bytes=2 * MB)
    result = client.pull("mistral:7b")
    assert (result.action, fake.pull_requests) == ("pulled", ["mistral:7b"] * 2)
    assert sum(fake.sent.values()) == fake.size("mistral:7b")


def test_an_unknown_model_fails_at_once_with_a_hint(ollama):
    client, fake = ollama
    result = client.pull("no-such-model:1b")
    assert result.action == "failed"
    # Ollama was asked once: its answer is final, another try cannot make the model exist.
    assert fake.pull_requests == ["no-such-model:1b"]
    assert result.error == f"no-such-model:1b: no such model ({NOT_FOUND})"
    assert "ollama.com/library" in result.hint


def test_a_model_that_needs_mlx_fails_at_once_with_a_hint(ollama):
    client, fake = ollama
    result = client.pull(MLX)
    assert result.action == "failed"
    assert fake.pull_requests == [MLX]  # final: not retried
    assert result.error == f"{MLX}: Ollama: {MLX_ERROR}"
    assert "GGUF tag" in result.hint
    assert fake.lines == [{"status": "pulling manifest"}, {"error": MLX_ERROR}]  # on HTTP 200


def test_a_name_ollama_refuses_is_a_400_and_final(ollama):
    client, fake = ollama
    result = client.pull("llama3.1:8b:q4")  # a colon in the model part
    assert result.action == "failed"
    assert result.error == "llama3.1:8b:q4: HTTP 400: invalid model name"
    assert result.hint == ol.NAME_HINT
    assert fake.pull_requests == ["llama3.1:8b:q4"]  # final: not retried
    # pull_all checks the name with the same grammar before asking Ollama at all.
    report = client.pull_all(["llama3.1:8b:q4"])
    assert not report.ok
    assert "invalid model name (the model 'llama3.1:8b' may not contain ':')" in report.results[0].error
    assert fake.pull_requests == ["llama3.1:8b:q4"]


def test_bad_requests_get_ollamas_400s(bed):
    kube_client, namespace, _ = bed
    empty = kube_client.proxy("POST", namespace, "ollama", 11434, "api/pull", headers={"Content-Length": "0"})
    assert (empty.status, empty.json()) == (400, {"error": "missing request body"})
    invalid = kube_client.proxy("POST", namespace, "ollama", 11434, "api/pull", body={"model": "a b"})
    assert (invalid.status, invalid.json()) == (400, {"error": "invalid model name"})


def test_a_repull_that_replaces_layers_removes_the_unused_ones(ollama):
    client, fake = ollama
    fake.install("mistral:7b")
    old = {blob.digest for blob in fake.blobs_of("mistral:7b")}
    fake.update("mistral:7b", [3 * MB, 500])
    events: list[ol.Progress] = []
    report = client.pull_all(["mistral:7b"], events.append, skip_present=False)
    assert report.ok, report.results[0].error
    statuses = [e.status for e in events]
    assert statuses[-3:] == ["removing unused layers", "success", "success"]
    assert not (old - {fake.blobs_of("mistral:7b")[-1].digest}) & set(fake.blobs)  # old layers gone


def test_a_failed_clean_up_after_a_pull_is_no_failure(ollama):
    client, fake = ollama
    fake.install("mistral:7b")
    fake.update("mistral:7b", [3 * MB, 500])
    fake.prune_error = "remove /root/.ollama/models/blobs/sha256-1: permission denied"
    events: list[ol.Progress] = []
    report = client.pull_all(["mistral:7b"], events.append, skip_present=False)
    assert [r.action for r in report.results] == ["pulled"]
    assert fake.pull_requests == ["mistral:7b"]  # no failure, no second try
    assert f"couldn't remove unused layers: {fake.prune_error}" in [e.status for e in events]


def test_ollama_keeps_connections_alive(ollama):
    client, fake = ollama
    for _ in range(4):
        client.version()
        client.models()
    # Eight requests through the proxy; the API server reuses its kept-alive backend connections.
    assert fake.connections < 8


def test_a_request_on_a_dropped_connection_is_retried(ollama):
    client, fake = ollama
    # A GET on a dropped kept-alive connection: the API server's transport itself retries it on a
    # new connection (Go does for idempotent requests); k3stack's own retry of reads is proven in
    # tests/unit/test_ollama.py. A POST is never retried by the proxy: k3stack's policy must.
    fake.drop_next("/api/tags")
    assert client.models() == []
    fake.drop_next("/api/pull")
    result = client.pull("tinyllama")
    assert result.action == "pulled", result.error
    assert fake.dropped == ["/api/tags", "/api/pull"]
    # The dropped POST never reached Ollama's handler: the proxy answered 5xx, and the policy
    # tried again after a pause.
    assert fake.pull_requests == ["tinyllama"]
    assert result.attempts >= 2
    assert len(client.pauses) >= 1


def test_blobs_fetched_between_two_ticks_never_show_and_the_size_comes_from_api_tags(ollama):
    client, fake = ollama
    fake.first_byte_ticks = 0  # the config blob arrives within one tick: Ollama sends no line for it
    result = client.pull("tinyllama")
    assert result.action == "pulled", result.error
    assert fake.pull_requests == ["tinyllama"]  # no second try: the size is right the first time
    assert result.size == fake.size("tinyllama") == MB + 487
    config = fake.blobs_of("tinyllama")[-1]
    assert not [line for line in fake.lines if line.get("digest") == config.digest]
    layer = [line for line in fake.lines if "digest" in line]
    assert layer[-1]["completed"] < layer[-1]["total"]  # its last line never showed it complete


def test_two_models_pull_concurrently(ollama):
    client, fake = ollama
    fake.rate = 8 * MB  # llama ~0.6 s, mistral ~0.5 s on their own
    seen: dict[str, list[float]] = {}

    def track(progress: ol.Progress) -> None:
        seen.setdefault(progress.model, []).append(time.monotonic())

    report = client.pull_all(["llama3.1:8b", "mistral:7b"], track)
    assert report.ok
    # At once, not one after the other: each stream began before the other ended (bench/smoke
    # measures the ratio to the slower pull).
    (a_first, *_, a_last), (b_first, *_, b_last) = seen.values()
    assert max(a_first, b_first) < min(a_last, b_last)


def test_pull_models_prints_plain_progress_and_one_line_per_model(ollama):
    client, fake = ollama
    fake.install("tinyllama")
    out = io.StringIO()
    console = Console(stream=out, interactive=False, plain_interval=0)
    report = ol.pull_models(client, ["tinyllama", "mistral:7b", "nope:1b"], console)
    text = out.getvalue()
    assert not report.ok
    assert "model tinyllama:latest unchanged (already present, 1.0 MB)" in text
    assert "mistral:7b: pulling manifest" in text
    assert " of 4.0 MB (" in text, text  # byte counts while downloading
    assert "model mistral:7b created (4.0 MB in" in text
    assert "model nope:1b failed — nope:1b: no such model" in text
    assert "hint: check the name and tag" in text


def test_wait_ready_returns_the_version(ollama):
    client, _ = ollama
    assert client.wait_ready(timeout=5) == "0.32.15"


def test_ollama_without_endpoints_is_a_clear_error(bed):
    kube_client, namespace, _ = bed
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    client = ol.Ollama(kube_client, namespace, service="no-ollama", sleep=sleep)
    started = time.monotonic()
    with pytest.raises(ol.OllamaError, match="HTTP 404"):
        client.wait_ready(timeout=0.5, interval=0.2)
    assert 1 <= len(pauses) <= 2  # retried until the timeout, then the last answer raised
    assert time.monotonic() - started < 2
    pauses.clear()
    with pytest.raises(ol.OllamaError, match=r"Ollama \(service no-ollama:11434 in namespace t-ollama-\w+\).*HTTP 404"):
        client.models()
    assert pauses == []  # a 404 is final: no retry


class StartingWebUI(JsonHandler):
    """Open WebUI still starting: its probes (/health, /health/db) fail until the test Ollama has
    been asked for a model, then pass."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        pulling = bool(self.server.app.pull_requests)  # type: ignore[attr-defined]
        self.send_json(200 if pulling else 503, {"status": pulling})


def test_a_deploy_pulls_the_models_while_open_webui_is_still_starting(kube):
    """Issue 16: a stack's pulls start as soon as its Ollama is Ready, alongside the other rollouts,
    through the real deploy (apply, rollout.Waiter, the bed's API server and node). Open WebUI
    passes its probes only once a pull has begun: pulls made after every rollout never come."""
    suffix = uuid.uuid4().hex[:6]
    namespace, monitoring = f"t-pulls-{suffix}", f"t-pullm-{suffix}"
    fake = FakeOllama({"tinyllama": [2 * MB], "nomic-embed-text:v1.5": [1 * MB]}, rate=20 * MB, tick=0.02)
    servers = [fake.serve(kube.serve_behind_pods(namespace, {"app.kubernetes.io/name": "ollama"}, 11434))]
    webui = {"app.kubernetes.io/name": "open-webui"}
    sock = kube.serve_behind_pods(namespace, webui, 8080)
    kube.sim.route(namespace, webui, sock.getsockname()[0], probe=True)
    servers.append(serve(sock, StartingWebUI, fake))
    loaded = settings.load(
        env_dir=Path("/nonexistent"),
        environ={
            "DOMAIN": "203.0.113.10.sslip.io",
            "ACME_EMAIL": "ops@example.com",
            "STACK_NAMESPACE": namespace,
            "MONITORING_NAMESPACE": monitoring,
            "OLLAMA_MODELS": "tinyllama,nomic-embed-text:v1.5",
        },
    )
    kube_client = Kube(str(kube.kubeconfig))
    out = io.StringIO()
    console = Console(stream=out, interactive=False, plain_interval=0)
    stacks = pipeline.plan_all([loaded], kube_client, console)
    try:
        outcome = pipeline.deploy_stacks(kube_client, stacks, console, timeout=90)
        text = out.getvalue()
        assert [(r.model, r.action) for r in outcome.pulled[0].results] == [
            ("tinyllama:latest", "pulled"),
            ("nomic-embed-text:v1.5", "pulled"),
        ], text
        assert all(status.done for status in outcome.report.rollouts.values())
        ollama_ready = text.index(f"deployment.apps/ollama ({namespace}): successfully rolled out")
        pulling = text.index(f"==> pulling 2 model(s) through service ollama:11434 in namespace {namespace}")
        webui_ready = text.index(f"deployment.apps/open-webui ({namespace}): successfully rolled out")
        assert ollama_ready < pulling < webui_ready, text
        assert "model tinyllama:latest created (2.0 MB in" in text
    finally:
        for server in servers:
            server.shutdown()
        deploy.destroy(kube_client, stacks[0].plan, Console(stream=io.StringIO(), interactive=False), purge=True)
