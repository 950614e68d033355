"""The task pipelines (k3stack/pipeline.py): summaries, JSON, render output, rows; and how a deploy's
model pulls run alongside its rollouts, over a scripted API server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from k3stack import deploy, pipeline, settings
from k3stack import ollama as ol
from k3stack.apply import Result
from k3stack.console import Console
from k3stack.kube import ProxyResponse
from k3stack.ollama import PullReport, PullResult
from k3stack.rollout import RolloutError, Status, Target

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}


def load(**more):
    return settings.load(env_dir=Path("/nonexistent"), environ={**BASE, **more})


def outcome(actions, pulled=()):
    report = deploy.DeployReport(results=[Result(f"configmap/c{i}", "ns", a) for i, a in enumerate(actions)])
    report.seconds = 1.234
    report.rollouts = {Target("apps/v1", "Deployment", "ns", "web"): Status(True, "successfully rolled out")}
    return pipeline.DeployOutcome(report, [PullReport(list(pulled))], requests=40)


def test_a_no_op_says_no_changes_with_counts_time_and_requests():
    assert outcome(["unchanged", "unchanged"]).summary() == "no changes: 2 unchanged in 1.2s (40 API requests)"


def test_a_pulled_model_is_a_change():
    done = outcome(["unchanged"], [PullResult("llama3.1:8b", "pulled", size=10), PullResult("m:1", "present")])
    assert done.changed
    assert done.summary() == "changed: 1 unchanged, 1 model(s) pulled in 1.2s (40 API requests)"
    failed = outcome(["created"], [PullResult("x:1", "failed", error="boom")])
    assert [r.model for r in failed.failed_models] == ["x:1"]
    assert failed.summary().startswith("changed: 1 created in")


def test_the_json_summary_keeps_its_keys():
    data = outcome(["configured"]).to_json()
    assert set(data) == {"changed", "counts", "seconds", "objects", "rollouts", "models"}
    assert data["objects"] == [{"object": "configmap/c0", "namespace": "ns", "action": "configured"}]
    assert data["rollouts"] == {"deployment.apps/web": "successfully rolled out"}
    assert (data["changed"], data["seconds"], data["counts"]) == (True, 1.23, {"configured": 1})


def test_render_redacts_every_secret_value_unless_asked():
    loaded = load()
    hidden = [m for m in pipeline.rendered(loaded) if m.kind == "Secret"]
    assert hidden
    assert {v for m in hidden for v in m.obj["data"].values()} == {pipeline.REDACTED}
    assert base64.b64decode(pipeline.REDACTED) == b"<redacted>"
    shown = [m for m in pipeline.rendered(loaded, show_secrets=True) if m.kind == "Secret"]
    assert pipeline.REDACTED not in {v for m in shown for v in m.obj["data"].values()}


def test_rendered_files_are_per_target_and_private_when_they_hold_secrets(tmp_path):
    objects = pipeline.rendered(load(), show_secrets=True)
    (tmp_path / "k3stack.yaml").write_text("older\n")
    (tmp_path / "k3stack.yaml").chmod(0o644)
    written = pipeline.write_rendered(objects, tmp_path, private=True)
    assert sorted(p.name for p in written) == ["k3stack.yaml", "llm-stack.yaml", "monitoring.yaml"]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sum(len(list(yaml.safe_load_all(p.read_text()))) for p in written) == len(objects)
    public = pipeline.write_rendered(pipeline.rendered(load()), tmp_path / "public", private=False)
    assert {stat.S_IMODE(p.stat().st_mode) for p in public} == {0o644}


def test_credential_rows_and_what_is_not_ready():
    rows = pipeline.credential_rows(load(), {"WEBUI_ADMIN_PASSWORD": "a" * 16, "NETDATA_PASSWORD": "n" * 16})
    assert rows[0] == [
        "Open WebUI (admin)",
        "https://chat.203.0.113.10.sslip.io",
        "admin@203.0.113.10.sslip.io",
        "a" * 16,
    ]
    assert rows[1][:3] == ["Netdata", "https://monitor.203.0.113.10.sslip.io", load()["NETDATA_USER"]]
    status = [["llm", "deployment.apps/ollama", "0/1", "missing"], ["llm", "deployment.apps/redis", "1/1", "ready"]]
    assert pipeline.not_ready(status) == "deployment.apps/ollama (llm): missing"


# -- model pulls alongside the rollouts (issue 16: time to a working stack) ------------------------------
MODELS = ["llama3.1:8b", "mistral:7b", "nomic-embed-text:v1.5"]  # the default OLLAMA_MODELS


def line(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


class Stream:
    """One /api/pull stream: Ollama's lines to "success", or (`endless`) a progress line every 20 ms
    until the connection is dropped (reading then fails, as a shut-down socket does); 10 s at most."""

    def __init__(self, endless: bool):
        self.endless = endless
        self.dropped = threading.Event()
        self.sent = 0
        self.pieces = [line(status="pulling manifest"), line(status="success")]

    def read1(self, size: int) -> bytes:
        if not self.endless:
            return self.pieces.pop(0) if self.pieces else b""
        if self.dropped.wait(0.02):
            raise OSError("connection shut down")
        self.sent += 1
        if self.sent > 500:  # the cancel did not come: the test fails, never hangs
            return b""
        return line(status="pulling aaaaaaaaaaaa", digest="sha256:aaaa", total=10**9, completed=self.sent)

    def shutdown(self) -> None:
        self.dropped.set()


def workload(name: str, ready: bool) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "updatedReplicas": 1, "replicas": 1, "availableReplicas": int(ready)},
    }


class Cluster:
    """The API server deploy_stacks talks to, scripted: a Deployment is Ready when `ready(name)` says
    so (Netdata's chart is installed); Ollama's service proxy answers /api/version (`version` is its
    HTTP status), /api/tags (the models pulled so far) and streams each /api/pull. `log` holds
    ("pull", model) and ("ready", workload) in the order they happened."""

    def __init__(self, ready=lambda name: True, *, endless: bool = False, version: int = 200):
        self.ready = ready
        self.endless = endless
        self.version = version
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []
        self.pulled: set[str] = set()
        self.streams: list[Stream] = []
        self.proxied: list[str] = []
        self.pulling = threading.Event()
        self.lock = threading.Lock()

    def get(self, api_version, kind, name, namespace=None):
        if kind == "HelmChart":
            return {"metadata": {"name": name}, "status": {"jobName": f"helm-install-{name}"}}
        if kind == "Job":
            return {"metadata": {"name": name}, "status": {"succeeded": 1}}
        ready = self.ready(name)
        with self.lock:
            if ready and ("ready", name) not in self.log:
                self.log.append(("ready", name))
        return workload(name, ready)

    def list(self, *args, **kwargs):
        return []

    def log_tail(self, *args, **kwargs):
        return ""

    def proxy(self, method, namespace, service, port, path, **options):
        self.proxied.append(path)
        status = self.version if path == "api/version" else 200
        answer = ProxyResponse(status, {}, None)
        if path == "api/version":
            answer.body = b'{"version":"0.32.15"}' if status == 200 else b'{"message":"no endpoints available"}'
        else:
            answer.body = json.dumps({"models": [{"name": m, "size": 1000} for m in sorted(self.pulled)]}).encode()
        return answer

    @contextlib.contextmanager
    def proxy_stream(self, method, namespace, service, port, path, body=None, **options):
        stream = Stream(self.endless)
        with self.lock:
            self.log.append(("pull", body["model"]))
            self.streams.append(stream)
            if not self.endless:
                self.pulled.add(ol.normalise(body["model"]))
        self.pulling.set()
        yield ProxyResponse(200, {}, stream)


@pytest.fixture
def rollouts_only(monkeypatch):
    """deploy.deploy_many without the apply: the rollout wait as deploy makes it (its progress, its
    Waiter) over the workloads of every plan."""

    def deploy_many(kube, plans, console, *, wait=True, timeout=600, dry_run=False, **options):
        report = deploy.DeployReport()
        if wait and not dry_run:
            manifests = [m for p in plans for m in p.manifests]
            report.rollouts = deploy.wait_for_rollouts(kube, manifests, console, timeout)
        return report

    monkeypatch.setattr(deploy, "deploy_many", deploy_many)


def stack(**more) -> pipeline.Stack:
    loaded = load(**more)
    return pipeline.Stack(loaded, deploy.make_plan(loaded, lambda namespace, name: None))


def plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(stream=out, interactive=False, plain_interval=0), out


@pytest.mark.timeout(30)
def test_pulls_start_when_ollama_is_ready_while_the_other_rollouts_go_on(rollouts_only):
    # Open WebUI gets ready only once a pull has started: waiting for every rollout before pulling
    # would time out here.
    cluster = Cluster(lambda name: name != "open-webui" or cluster.pulling.is_set())
    console, out = plain()
    outcome = pipeline.deploy_stacks(cluster, [stack()], console, timeout=5)  # type: ignore[arg-type]
    assert [(r.model, r.action) for p in outcome.pulled for r in p.results] == [(m, "pulled") for m in MODELS]
    assert all(s.done for s in outcome.report.rollouts.values())
    first_pull = next(i for i, (what, _) in enumerate(cluster.log) if what == "pull")
    assert cluster.log.index(("ready", "ollama")) < first_pull < cluster.log.index(("ready", "open-webui"))
    text = out.getvalue()
    # The words of today, the pulls' lines between the rollouts' ones.
    assert text.index("deployment.apps/ollama (llm-stack): successfully rolled out") < text.index(
        "==> pulling 3 model(s) through service ollama:11434 in namespace llm-stack"
    )
    assert "llama3.1:8b: pulling manifest" in text
    assert "model llama3.1:8b created (1.0 kB in" in text
    assert "deployment.apps/open-webui (llm-stack): successfully rolled out" in text
    assert ", 3 model(s) pulled in " in outcome.summary()  # the report, shaped as before
    assert [m["action"] for m in outcome.to_json()["models"]] == ["pulled"] * 3


@pytest.mark.timeout(30)
def test_a_failed_rollout_cancels_the_pulls_and_is_the_error_reported(rollouts_only):
    cluster = Cluster(lambda name: name != "open-webui", endless=True)  # the pulls would run 10 s
    console, out = plain()
    started = time.monotonic()
    with pytest.raises(RolloutError) as failed:
        pipeline.deploy_stacks(cluster, [stack()], console, timeout=1)  # type: ignore[arg-type]
    assert str(failed.value).startswith("timed out after 1s waiting for deployment.apps/open-webui")
    assert len(cluster.streams) == 3
    assert all(s.dropped.is_set() for s in cluster.streams)  # every download dropped at once
    assert time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith(("models", "pull"))]  # all stopped
    assert "model mistral:7b failed — mistral:7b: cancelled" in out.getvalue()


@pytest.mark.timeout(30)
def test_an_ollama_that_does_not_answer_does_not_hide_a_failed_rollout(rollouts_only):
    # Ollama's Deployment is Ready but its Service does not answer (wait_ready would try for 60 s).
    cluster = Cluster(lambda name: name != "open-webui", version=503)
    started = time.monotonic()
    with pytest.raises(RolloutError, match=r"timed out after 1s waiting for deployment\.apps/open-webui"):
        pipeline.deploy_stacks(cluster, [stack()], plain()[0], timeout=1)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5  # the cancel ended Ollama's wait too
    assert cluster.streams == []


@pytest.mark.timeout(30)
def test_an_ollama_that_cannot_be_asked_fails_the_run_once_the_rollouts_are_done(rollouts_only, monkeypatch):
    def not_ready(self, timeout=60, interval=1):
        raise ol.OllamaError(f"Ollama ({self.where}) GET /api/version: HTTP 503 no endpoints available")

    monkeypatch.setattr(ol.Ollama, "wait_ready", not_ready)
    cluster = Cluster(lambda name: name != "open-webui" or ("ready", "ollama") in cluster.log)
    with pytest.raises(ol.OllamaError, match="HTTP 503 no endpoints available"):
        pipeline.deploy_stacks(cluster, [stack()], plain()[0], timeout=5)  # type: ignore[arg-type]
    assert ("ready", "open-webui") in cluster.log  # the rollouts went on to their end


@pytest.mark.parametrize(
    "options", [{"pull": False}, {"wait": False}, {"dry_run": True}], ids=["no-pull", "no-wait", "dry-run"]
)
def test_no_pull_no_wait_and_dry_run_pull_nothing(rollouts_only, options):
    cluster = Cluster()
    console, out = plain()
    outcome = pipeline.deploy_stacks(cluster, [stack()], console, timeout=5, **options)  # type: ignore[arg-type]
    assert (outcome.pulled, cluster.proxied, cluster.streams) == ([], [], [])
    assert "pulling" not in out.getvalue()


@pytest.mark.timeout(30)
def test_several_stacks_pull_at_once_each_line_naming_its_stack(rollouts_only):
    cluster = Cluster(lambda name: name != "open-webui" or cluster.pulling.is_set())
    stacks = [stack(STACK_NAMESPACE=f"llm-{s}", MONITORING_NAMESPACE=f"mon-{s}", OLLAMA_MODELS=m) for s, m in
              (("a", "mistral:7b,nomic-embed-text:v1.5"), ("b", "llama3.1:8b,nomic-embed-text:v1.5"))]  # fmt: skip
    console, out = plain()
    outcome = pipeline.deploy_stacks(cluster, stacks, console, timeout=5)  # type: ignore[arg-type]
    # One report per stack, in the stacks' order; results keep the plain names.
    assert [[r.model for r in p.results] for p in outcome.pulled] == [
        ["mistral:7b", "nomic-embed-text:v1.5"],
        ["llama3.1:8b", "nomic-embed-text:v1.5"],
    ]
    text = out.getvalue()
    assert "==> pulling 2 model(s) through service ollama:11434 in namespace llm-b" in text
    assert "mistral:7b (llm-a): pulling manifest" in text
    assert "llm-b/model llama3.1:8b created (" in text


@pytest.mark.timeout(30)
def test_pull_bars_and_the_rollout_bar_share_the_screen(rollouts_only):
    """A person's terminal: the rollouts' bar shows inside the pulls' (one live display), ends first."""
    cluster = Cluster(lambda name: name != "open-webui" or cluster.pulling.is_set())
    out = io.StringIO()
    outcome = pipeline.deploy_stacks(cluster, [stack()], Console(stream=out, interactive=True), timeout=5)  # type: ignore[arg-type]
    assert outcome.new_models == 3
    text = out.getvalue()
    assert "waiting for rollouts" in text
    assert "nomic-embed-text:v1.5" in text
    assert "model mistral:7b created" in text
