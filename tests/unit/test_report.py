"""Smoke results in their output shapes, read back by real consumers (junitparser, json)."""

from __future__ import annotations

import io
import json
import re

from junitparser import Failure, JUnitXml

from k3stack import report as rp
from k3stack.console import Console


def sample() -> rp.SmokeReport:
    return rp.SmokeReport(
        [
            rp.CheckResult("nodes Ready", "cluster", True, 0.12, detail="1 node(s) Ready"),
            rp.CheckResult(
                "admin sign-in lists models",
                "public",
                False,
                2.5,
                reason="refused | password s3cret-value-xyz",
                hint="check WEBUI_ADMIN_PASSWORD",
                attempts=3,
            ),
            rp.CheckResult("websocket handshake", "public", True, 0.3, detail="Engine.IO handshake"),
        ],
        seconds=2.6,
    )


def test_ok_is_false_when_any_check_fails():
    report = sample()
    assert not report.ok
    assert [r.name for r in report.failed] == ["admin sign-in lists models"]
    assert report.headline() == "smoke: 1 of 3 checks FAILED in 2.6s"
    passing = rp.SmokeReport([report.results[0]], 0.1)
    assert passing.ok
    assert passing.headline() == "smoke: all 1 checks passed in 0.1s"


def test_junit_has_one_testcase_per_check_and_parses(tmp_path):
    path = tmp_path / "smoke.xml"
    path.write_text(rp.junit_xml(sample(), lambda s: s.replace("s3cret-value-xyz", "<redacted>")))
    [suite] = list(JUnitXml.fromfile(str(path)))
    assert suite.name == "k3stack smoke"
    assert (suite.tests, suite.failures, suite.errors) == (3, 1, 0)
    cases = {case.name: case for case in suite}
    assert set(cases) == {"nodes Ready", "admin sign-in lists models", "websocket handshake"}
    assert cases["nodes Ready"].is_passed
    assert cases["nodes Ready"].classname == "smoke.cluster"
    assert cases["nodes Ready"].time == 0.12
    [failure] = cases["admin sign-in lists models"].result
    assert isinstance(failure, Failure)
    assert failure.message == "refused | password <redacted>"
    assert failure.text == "refused | password <redacted>\nhint: check WEBUI_ADMIN_PASSWORD"
    assert "s3cret-value-xyz" not in path.read_text()


def test_markdown_is_one_table_with_a_row_per_check():
    text = rp.markdown(sample())
    lines = text.splitlines()
    assert lines[0] == "### ❌ smoke: 1 of 3 checks FAILED in 2.6s"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, one row per check
    # Six unescaped pipes = five columns on every line: an escaped \| in a reason adds none.
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 6 for line in table)
    assert table[3] == (
        "| ❌ fail | admin sign-in lists models | public | 2.50 | "
        "**refused \\| password s3cret-value-xyz** — check WEBUI_ADMIN_PASSWORD |"
    )


def test_emit_prints_table_writes_junit_and_appends_summary_redacted(tmp_path):
    out = io.StringIO()
    console = Console(stream=out, interactive=False)
    console.add_secrets(["s3cret-value-xyz"])
    summary = tmp_path / "summary.md"
    summary.write_text("# build\n")
    junit = tmp_path / "junit.xml"
    rp.emit(sample(), console, junit=junit, environ={"GITHUB_STEP_SUMMARY": str(summary)})
    printed = out.getvalue()
    assert "FAIL" in printed
    assert "admin sign-in lists models: hint: check WEBUI_ADMIN_PASSWORD" in printed
    for text in (printed, summary.read_text(), junit.read_text()):
        assert "s3cret-value-xyz" not in text
    assert summary.read_text().startswith("# build\n### ❌ smoke")


def test_emit_json_is_parseable_and_skips_the_summary_without_github(tmp_path):
    out = io.StringIO()
    rp.emit(sample(), Console(stream=out, interactive=False), as_json=True, environ={})
    data = json.loads(out.getvalue())
    assert data["ok"] is False
    assert [c["ok"] for c in data["checks"]] == [True, False, True]
    assert data["checks"][1]["attempts"] == 3
    assert list(tmp_path.iterdir()) == []
