"""Smoke results and the shapes they are shown in: a table for people, JSON for scripts, JUnit XML
for CI test reports, and a Markdown table for the GitHub Actions step summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .console import Console

Redact = Callable[[str], str]


@dataclass
class CheckResult:
    """One check's outcome: on failure `reason` says what was wrong and `hint` what to do."""

    name: str
    group: str  # cluster | in-cluster | public
    ok: bool
    seconds: float
    detail: str = ""  # what was seen when it passed (version, issuer, counts)
    reason: str = ""
    hint: str = ""
    attempts: int = 1


@dataclass
class SmokeReport:
    """The smoke run: every check's result and the wall time (s)."""

    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """False when any check failed: the task exits 1."""
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that failed."""
        return [r for r in self.results if not r.ok]

    def headline(self) -> str:
        """One line for people: how many checks passed, failed, and how long it took."""
        if self.ok:
            return f"smoke: all {len(self.results)} checks passed in {self.seconds:.1f}s"
        return f"smoke: {len(self.failed)} of {len(self.results)} checks FAILED in {self.seconds:.1f}s"


def _same(text: str) -> str:
    return text


def to_json(report: SmokeReport, redact: Redact = _same) -> dict:
    """The report as a JSON-ready dict: ok, seconds, and per check name, group, ok, seconds, attempts,
    detail, reason, hint (text passed through `redact`)."""
    return {
        "ok": report.ok,
        "seconds": round(report.seconds, 3),
        "checks": [
            {
                "name": r.name,
                "group": r.group,
                "ok": r.ok,
                "seconds": round(r.seconds, 3),
                "attempts": r.attempts,
                "detail": redact(r.detail),
                "reason": redact(r.reason),
                "hint": redact(r.hint),
            }
            for r in report.results
        ],
    }


def junit_xml(report: SmokeReport, redact: Redact = _same) -> str:
    """One <testsuite> "k3stack smoke", one <testcase> per check (classname = its group)."""
    suites = ET.Element("testsuites", name="k3stack", tests=str(len(report.results)))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="k3stack smoke",
        tests=str(len(report.results)),
        failures=str(len(report.failed)),
        errors="0",
        skipped="0",
        time=f"{report.seconds:.3f}",
    )
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"smoke.{r.group}", name=r.name, time=f"{r.seconds:.3f}")
        if r.ok:
            ET.SubElement(case, "system-out").text = redact(r.detail)
        else:
            failure = ET.SubElement(case, "failure", message=redact(r.reason), type="SmokeCheckFailed")
            failure.text = redact(f"{r.reason}\nhint: {r.hint}" if r.hint else r.reason)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def markdown(report: SmokeReport, redact: Redact = _same) -> str:
    """The step summary: a heading line and one table with a row per check."""
    lines = [
        f"### {'✅' if report.ok else '❌'} {report.headline()}",
        "",
        "| result | check | group | seconds | detail |",
        "|---|---|---|---:|---|",
    ]
    for r in report.results:
        what = r.detail if r.ok else f"**{r.reason}**" + (f" — {r.hint}" if r.hint else "")
        result = "✅ pass" if r.ok else "❌ fail"
        lines.append(f"| {result} | {_cell(r.name)} | {r.group} | {r.seconds:.2f} | {_cell(redact(what))} |")
    return "\n".join(lines) + "\n"


def show(report: SmokeReport, console: Console) -> None:
    """The table for people (plain columns in CI), then each failure's hint."""
    console.table(
        report.headline(),
        ["result", "check", "seconds", "detail / reason"],
        [
            ["pass" if r.ok else "FAIL", r.name, f"{r.seconds:.2f}", r.detail if r.ok else r.reason]
            for r in report.results
        ],
    )
    for r in report.failed:
        if r.hint:
            console.line(f"{r.name}: hint: {r.hint}", style="yellow")


def emit(
    report: SmokeReport,
    console: Console,
    *,
    as_json: bool = False,
    junit: str | Path | None = None,
    summary: str | Path | None = None,
) -> None:
    """Everything `inv smoke` outputs: the table (or JSON), the JUnit file when asked, and the
    Markdown table appended to the file `summary` when given (the face passes
    $GITHUB_STEP_SUMMARY: GitHub Actions shows it on the run's page). All text is redacted."""
    if as_json:
        console.json(to_json(report))
    else:
        show(report, console)
    if junit:
        Path(junit).write_text(junit_xml(report, console.redact))
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(markdown(report, console.redact))
