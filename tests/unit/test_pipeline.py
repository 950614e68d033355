"""The task pipelines' pure parts (k3stack/pipeline.py): summaries, JSON, render output, rows."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import yaml

from k3stack import deploy, pipeline, settings
from k3stack.apply import Result
from k3stack.ollama import PullReport, PullResult
from k3stack.rollout import Status, Target

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
