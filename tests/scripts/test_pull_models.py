"""scripts/pull_models.py: pulls through the API server's service proxy with only a kubeconfig,
as a subprocess (no invoke, no settings), against the test Ollama behind the bed's pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from k3stack.kube import Kube
from tests.integration.test_ollama import service_behind
from tests.testbed.fake_ollama import FakeOllama

REPO = Path(__file__).resolve().parents[2]


def script(*args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG"))}
    return subprocess.run(
        [sys.executable, "-m", "scripts.pull_models", *args],
        cwd=REPO,
        env={**environ, "CI": "true"},
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def test_pulls_verifies_and_skips_what_is_present(kube):
    client = Kube(str(kube.kubeconfig))
    namespace = f"t-pull-{uuid.uuid4().hex[:6]}"
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, field_manager="test")
    fake = FakeOllama({"tinyllama:latest": [300_000], "mistral:7b": [200_000, 500]})
    server = fake.serve(kube.serve_behind_pods(namespace, {"app.kubernetes.io/name": "ollama"}, 11434))
    try:
        service_behind(client, namespace, "ollama", 11434)
        where = ["--kubeconfig", str(kube.kubeconfig), "--namespace", namespace]
        first = script(*where, "--json", "tinyllama", "mistral:7b")
        assert first.returncode == 0, first.stdout + first.stderr
        report = json.loads(first.stdout[first.stdout.index("{") :])
        assert report["ok"] is True
        assert sorted(m["action"] for m in report["models"]) == ["pulled", "pulled"]
        again = script(*where, "tinyllama:latest")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "model tinyllama:latest unchanged (already present" in again.stdout
        unknown = script(*where, "no-such-model:1b")
        assert unknown.returncode == 1
        assert "no-such-model:1b" in unknown.stdout + unknown.stderr
        bad = script(*where, "not a name!")
        assert bad.returncode == 2
        assert bad.stderr.startswith("error: not a name!: ")
    finally:
        server.shutdown()
        client.delete("v1", "Namespace", namespace)
