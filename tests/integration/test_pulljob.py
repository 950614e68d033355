"""`inv models.pull --in-cluster` against the test bed: the Job is applied and followed like a
rollout (the node simulator runs its pod), then Ollama — the test Ollama behind the real Service,
through the API server's proxy — must list every model."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from k3stack import pulljob, settings
from k3stack.console import Console
from k3stack.kube import Kube
from k3stack.ollama import OllamaError
from tests.integration.test_ollama import service_behind
from tests.testbed.fake_ollama import FakeOllama

pytestmark = pytest.mark.timeout(180)
MODELS = ["tinyllama", "mistral:7b"]
HF = "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"


@pytest.fixture
def stack(kube):
    namespace = f"t-pulljob-{uuid.uuid4().hex[:6]}"
    client = Kube(str(kube.kubeconfig))
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, field_manager="test")
    fake = FakeOllama({"tinyllama": [1000], "mistral:7b": [2000], HF: [3000]})
    server = fake.serve(kube.serve_behind_pods(namespace, {"app.kubernetes.io/name": "ollama"}, 11434))
    service_behind(client, namespace, "ollama", 11434)
    loaded = settings.load(
        env_dir=Path("/nonexistent"),
        environ={"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com", "STACK_NAMESPACE": namespace},
    )
    out = io.StringIO()
    yield client, loaded, fake, Console(stream=out, interactive=False), out, kube
    if kube.sim is not None:
        kube.sim.clear()
    server.shutdown()
    client.delete("v1", "Namespace", namespace)


def test_the_job_runs_once_and_its_models_are_verified(stack):
    client, loaded, fake, console, out, _ = stack
    for model in MODELS:
        fake.install(model)  # what the Job's `ollama pull` leaves behind (no container runs here)
    assert pulljob.pull_in_cluster(client, loaded, MODELS, console, timeout=60) == "created"
    job = pulljob.job_manifest(loaded, MODELS)
    live = client.get("batch/v1", "Job", job.name, job.namespace)
    assert live["status"]["succeeded"] == 1
    env = {e["name"]: e["value"] for e in live["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PULL_MODELS"] == "tinyllama mistral:7b"
    assert env["OLLAMA_HOST"] == f"http://ollama.{job.namespace}.svc:11434"
    assert live["spec"]["template"]["metadata"]["labels"]["k3stack.dev/ollama-client"] == "true"
    assert f"job.batch/{job.name} complete (every model listed by Ollama)" in out.getvalue()
    # Same list again: the same Job, already done.
    assert pulljob.pull_in_cluster(client, loaded, MODELS, console, timeout=60) == "unchanged"
    assert pulljob.job_manifest(loaded, ["tinyllama"]).name != job.name


def test_a_model_missing_after_the_job_is_an_error(stack):
    client, loaded, fake, console, _, _ = stack
    fake.install("tinyllama")
    with pytest.raises(OllamaError, match=r"completed but Ollama does not list mistral:7b"):
        pulljob.pull_in_cluster(client, loaded, MODELS, console, timeout=60)


def test_models_are_found_in_the_form_ollama_lists_them(stack):
    client, loaded, fake, console, out, _ = stack
    # As written in OLLAMA_MODELS; /api/tags lists TinyLlama:latest, mistral:7b and the hf.co name.
    names = ["registry.ollama.ai/library/TinyLlama", "library/mistral:7b", HF]
    for model in names:
        fake.install(model)
    assert [m["name"] for m in fake.tags()["models"]] == ["TinyLlama:latest", HF, "mistral:7b"]
    assert pulljob.pull_in_cluster(client, loaded, [*names, "tinyllama:latest"], console, timeout=60) == "created"
    assert "(every model listed by Ollama)" in out.getvalue()


def test_names_ollama_would_refuse_never_reach_the_job(stack):
    client, loaded, _, console, _, _ = stack
    refusal = r"invalid model name: \*; reboot \(the model '\*; reboot' must start with"
    with pytest.raises(OllamaError, match=refusal) as refused:
        pulljob.pull_in_cluster(client, loaded, ["tinyllama", "*; reboot"], console, timeout=60)
    assert refused.value.hint.startswith("Ollama's model names are [host/][namespace/]model[:tag]")
    assert client.list("batch/v1", "Job", loaded["STACK_NAMESPACE"]) == []


def test_a_job_that_does_not_finish_says_why(stack):
    client, loaded, _, console, _, kube = stack
    if kube.sim is None:
        pytest.skip("needs the built-in node simulator")
    kube.sim.fail(loaded["STACK_NAMESPACE"], {"app.kubernetes.io/name": "ollama-pull"}, "pull of tinyllama failed")
    with pytest.raises(OllamaError) as failed:
        pulljob.pull_in_cluster(client, loaded, MODELS, console, timeout=5)
    message = str(failed.value)
    assert "timed out after 5s waiting for job.batch/ollama-pull-" in message
    assert "pull of tinyllama failed" in message  # the failing pod's reason, from its status
    assert failed.value.hint.startswith("the Job's log shows which model failed")
