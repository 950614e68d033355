"""Model pulls against the test Ollama, reached as production reaches Ollama: through the test
bed's real API server's service proxy, to a Service whose pod IP is the test server's address."""

from __future__ import annotations

import io
import time
import uuid

import pytest

from k3stack import ollama as ol
from k3stack.console import Console
from k3stack.kube import Kube
from tests.testbed.fake_ollama import NOT_FOUND, FakeOllama

pytestmark = pytest.mark.timeout(180)

MB = 1_000_000
LIBRARY = {"llama3.1:8b": [3 * MB, 2 * MB, 1000], "mistral:7b": [4 * MB, 500], "tinyllama": [1 * MB]}


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
    fake = FakeOllama(LIBRARY, rate=40 * MB, step=256_000)
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
    pauses: list[float] = []
    # A generous stall limit (a loaded CI machine pauses streams too); the stall test sets its own.
    client = ol.Ollama(kube_client, namespace, stall_seconds=5, attempts=3, backoff=0.5, sleep=pauses.append)
    client.pauses = pauses
    return client, fake


def test_pull_streams_progress_per_layer_and_verifies(ollama):
    client, fake = ollama
    events: list[ol.Progress] = []
    result = client.pull("llama3.1:8b", events.append)
    assert result.action == "pulled", result.error
    assert result.attempts == 1
    assert result.size == fake.size("llama3.1:8b") == 5 * MB + 1000
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-2:] == ["success", "success"]  # Ollama's last line, then the verified result
    assert "verifying sha256 digest" in statuses
    downloading = [e for e in events if e.status.startswith("pulling ") and e.total]
    assert len(downloading) > 10  # progress arrives as it streams, not in one piece
    completed = [e.completed for e in downloading]
    assert completed == sorted(completed)
    assert downloading[-1].completed == downloading[-1].total == result.size
    assert [m.name for m in client.models()] == ["llama3.1:8b"]


def test_models_already_present_are_skipped_and_names_normalised(ollama):
    client, fake = ollama
    fake.install("tinyllama")
    report = client.pull_all(["tinyllama", "tinyllama:latest", "mistral:7b"])
    assert [(r.model, r.action) for r in report.results] == [("tinyllama:latest", "present"), ("mistral:7b", "pulled")]
    # The present model is never requested; each request for the other is one of its attempts
    # (a loaded CI machine can make a pull stall and be retried, which is the code working).
    assert fake.pull_requests == ["mistral:7b"] * report.results[1].attempts
    assert report.ok


def test_a_stalled_pull_is_dropped_and_resumed_without_resending_finished_layers(ollama):
    client, fake = ollama
    first_layer = fake.library["llama3.1:8b"][0]
    fake.stall_once("llama3.1:8b", after_bytes=first_layer.size + MB)  # mid second layer
    client.stall_seconds = 1.0
    events: list[ol.Progress] = []
    started = time.monotonic()
    result = client.pull("llama3.1:8b", events.append)
    assert result.action == "pulled", result.error
    assert result.attempts == 2
    assert time.monotonic() - started < 10  # the stall was detected (1 s), not waited out (30 s)
    assert fake.pull_requests == ["llama3.1:8b", "llama3.1:8b"]
    assert client.pauses == [0.5]
    assert any(e.status.startswith("retrying in 0s: llama3.1:8b: no progress for 1s") for e in events)
    # Every byte crossed the wire once: the finished layer was not sent again, the partial one
    # continued where it stopped.
    for layer in fake.library["llama3.1:8b"]:
        assert fake.sent[layer.digest] == layer.size


def test_an_error_line_fails_the_attempt_with_ollamas_message(ollama):
    client, fake = ollama
    fake.fail("mistral:7b", "max retries exceeded: connection reset by peer", after_bytes=MB, times=3)
    result = client.pull("mistral:7b")
    assert result.action == "failed"
    assert result.attempts == 3
    assert result.error == "mistral:7b: Ollama: max retries exceeded: connection reset by peer"
    assert "mistral:7b" not in {m.name for m in client.models()}


def test_an_error_line_once_is_retried_and_resumes(ollama):
    client, fake = ollama
    fake.fail("mistral:7b", "max retries exceeded: EOF", after_bytes=2 * MB)
    result = client.pull("mistral:7b")
    assert (result.action, result.attempts) == ("pulled", 2)
    assert sum(fake.sent.values()) == fake.size("mistral:7b")


def test_an_unknown_model_fails_at_once_with_a_hint(ollama):
    client, fake = ollama
    result = client.pull("no-such-model:1b")
    assert result.action == "failed"
    # Ollama was asked once: its answer is final, another try cannot make the model exist.
    assert fake.pull_requests == ["no-such-model:1b"]
    assert result.error == f"no-such-model:1b: no such model ({NOT_FOUND})"
    assert "ollama.com/library" in result.hint


def test_a_model_listed_with_another_size_fails_verification(ollama):
    client, fake = ollama
    fake.mismatch.add("tinyllama:latest")
    result = client.pull("tinyllama")
    assert result.action == "failed"
    assert "/api/tags lists 1000001 bytes but the pull fetched 1000000" in result.error


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
    assert "mistral:7b: 4.0 MB of 4.0 MB (100%)" in text
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
    with pytest.raises(ol.OllamaError, match=r"Ollama \(service no-ollama:11434 in namespace t-ollama-\w+\).*HTTP 404"):
        client.models()
