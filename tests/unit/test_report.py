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
    rp.emit(sample(), console, junit=junit, summary=summary)
    printed = out.getvalue()
    assert "FAIL" in printed
    assert "admin sign-in lists models: hint: check WEBUI_ADMIN_PASSWORD" in printed
    for text in (printed, summary.read_text(), junit.read_text()):
        assert "s3cret-value-xyz" not in text
    assert summary.read_text().startswith("# build\n### ❌ smoke")


def test_emit_json_is_parseable_and_skips_the_summary_without_github(tmp_path):
    out = io.StringIO()
    rp.emit(sample(), Console(stream=out, interactive=False), as_json=True)
    data = json.loads(out.getvalue())
    assert data["ok"] is False
    assert [c["ok"] for c in data["checks"]] == [True, False, True]
    assert data["checks"][1]["attempts"] == 3
    assert list(tmp_path.iterdir()) == []


def wider() -> rp.SmokeReport:
    """sample() with unrounded times and a second failure that has no hint and a two-line reason."""
    report = sample()
    report.seconds, report.results[0].seconds = 2.61234, 0.12345
    report.results.append(rp.CheckResult("no hint", "in-cluster", False, 1.0, reason="down\nreally"))
    return report


def redact(text: str) -> str:
    return text.replace("s3cret-value-xyz", "<r>")


def test_json_holds_every_field_of_every_check_rounded_and_redacted():
    def check(name, group, ok, seconds, attempts=1, detail="", reason="", hint=""):
        return dict(
            name=name, group=group, ok=ok, seconds=seconds, attempts=attempts, detail=detail, reason=reason, hint=hint
        )

    assert rp.to_json(wider(), redact) == {
        "ok": False,
        "seconds": 2.612,
        "checks": [
            check("nodes Ready", "cluster", True, 0.123, detail="1 node(s) Ready"),
            check(
                "admin sign-in lists models",
                "public",
                False,
                2.5,
                3,
                "",
                "refused | password <r>",
                "check WEBUI_ADMIN_PASSWORD",
            ),
            check("websocket handshake", "public", True, 0.3, detail="Engine.IO handshake"),
            check("no hint", "in-cluster", False, 1.0, reason="down\nreally"),
        ],
    }
    assert rp.to_json(rp.SmokeReport([rp.CheckResult("x", "cluster", True, 0, detail="s3cret-value-xyz")])) == {
        "ok": True,
        "seconds": 0.0,
        "checks": [check("x", "cluster", True, 0, detail="s3cret-value-xyz")],  # nothing redacted unless asked
    }


def test_junit_xml_as_written():
    assert rp.junit_xml(wider(), redact) == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<testsuites name="k3stack" tests="4">\n'
        '  <testsuite name="k3stack smoke" tests="4" failures="2" errors="0" skipped="0" time="2.612">\n'
        '    <testcase classname="smoke.cluster" name="nodes Ready" time="0.123">\n'
        "      <system-out>1 node(s) Ready</system-out>\n"
        "    </testcase>\n"
        '    <testcase classname="smoke.public" name="admin sign-in lists models" time="2.500">\n'
        '      <failure message="refused | password &lt;r&gt;" type="SmokeCheckFailed">refused | password '
        "&lt;r&gt;\nhint: check WEBUI_ADMIN_PASSWORD</failure>\n"
        "    </testcase>\n"
        '    <testcase classname="smoke.public" name="websocket handshake" time="0.300">\n'
        "      <system-out>Engine.IO handshake</system-out>\n"
        "    </testcase>\n"
        '    <testcase classname="smoke.in-cluster" name="no hint" time="1.000">\n'
        '      <failure message="down&#10;really" type="SmokeCheckFailed">down\nreally</failure>\n'
        "    </testcase>\n"
        "  </testsuite>\n"
        "</testsuites>\n"
    )


def test_markdown_as_written():
    assert rp.markdown(wider(), redact) == (
        "### ❌ smoke: 2 of 4 checks FAILED in 2.6s\n"
        "\n"
        "| result | check | group | seconds | detail |\n"
        "|---|---|---|---:|---|\n"
        "| ✅ pass | nodes Ready | cluster | 0.12 | 1 node(s) Ready |\n"
        "| ❌ fail | admin sign-in lists models | public | 2.50 | **refused \\| password <r>** — check "
        "WEBUI_ADMIN_PASSWORD |\n"
        "| ✅ pass | websocket handshake | public | 0.30 | Engine.IO handshake |\n"
        "| ❌ fail | no hint | in-cluster | 1.00 | **down really** |\n"
    )
    passing = rp.SmokeReport([rp.CheckResult("a|b", "cluster", True, 0.5, detail=" x ")], 0.5)
    assert rp.markdown(passing) == (
        "### ✅ smoke: all 1 checks passed in 0.5s\n\n| result | check | group | seconds | detail |\n"
        "|---|---|---|---:|---|\n| ✅ pass | a\\|b | cluster | 0.50 | x |\n"
    )


def test_the_table_for_people_has_a_row_per_check_then_each_hint():
    out = io.StringIO()
    rp.show(wider(), Console(stream=out, interactive=False))
    lines = out.getvalue().splitlines()
    assert lines[0] == "smoke: 2 of 4 checks FAILED in 2.6s"
    rows = [line.replace("│", " ").split() for line in lines if line.startswith("│")]
    cells = [" ".join(row) for row in rows]
    assert "pass nodes Ready 0.12 1 node(s) Ready" in cells
    assert "FAIL admin sign-in lists models 2.50 refused | password s3cret-value-xyz" in cells
    assert "FAIL no hint 1.00 down" in cells
    assert [row[0] for row in rows if row[0] in ("pass", "FAIL")] == ["pass", "FAIL", "pass", "FAIL"]
    assert lines[-1] == "admin sign-in lists models: hint: check WEBUI_ADMIN_PASSWORD"
    assert sum("hint:" in line for line in lines) == 1  # a failure without a hint gets no hint line


def test_emit_shows_the_table_unless_json_and_takes_a_junit_path_as_text(tmp_path):
    out = io.StringIO()
    junit = tmp_path / "j.xml"
    rp.emit(wider(), Console(stream=out, interactive=False), junit=str(junit))
    assert out.getvalue().startswith("smoke: 2 of 4 checks FAILED in 2.6s\n")
    assert junit.read_text() == rp.junit_xml(wider())
    out = io.StringIO()
    rp.emit(wider(), Console(stream=out, interactive=False), as_json=True, summary="")
    assert json.loads(out.getvalue()) == rp.to_json(wider())
    assert list(tmp_path.iterdir()) == [junit]


def test_the_table_has_its_header_and_a_terminal_shows_hints_in_yellow():
    out = io.StringIO()
    rp.show(wider(), Console(stream=out, interactive=False))
    [header] = [line for line in out.getvalue().splitlines() if line.startswith("┃")]
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == ["result", "check", "seconds", "detail / reason"]
    out = io.StringIO()
    rp.show(wider(), Console(stream=out, interactive=True))
    assert "\x1b[33madmin sign-in lists models: hint: check WEBUI_ADMIN_PASSWORD\x1b[0m\n" in out.getvalue()
