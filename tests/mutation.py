"""Mutation testing's bookkeeping for `inv mutate` (tests/tasks.py): which mutants count (pyproject's
[tool.k3stack.mutate]), what mutmut found for each (its results under mutants/), which survivors are
reviewed equivalents (tests/mutation_equivalents.txt), the score per module, and the report.

mutmut names a mutant `k3stack.<module>.x_<function>__mutmut_<n>`, or `...xǁ<Class>ǁ<method>__mutmut_<n>`
for a method; `mutmut show NAME` prints its diff."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "k3stack"

# mutmut's exit codes (mutmut.stats.status_by_exit_code) grouped the way the score counts them:
# a test failed, errored or hung (timeout, killed by a signal) — the mutant was detected.
DETECTED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
DETECTED |= {-11: "killed (signal)", -9: "killed (signal)", 37: "caught by type check"}
# every test passed, or no test of the selection runs the mutated function, or mutmut was unsure.
UNDETECTED = {0: "survived", 5: "no tests", 33: "no tests", 35: "suspicious"}


@dataclass(frozen=True)
class Settings:
    threshold: float
    equivalents: Path
    report: Path
    modules: dict[str, list[str] | str]  # module -> "*" or its function names ("Class.method")


def settings(pyproject: Path = ROOT / "pyproject.toml") -> Settings:
    """[tool.k3stack.mutate] of pyproject.toml; paths relative to the file's folder."""
    conf = tomllib.loads(pyproject.read_text())["tool"]["k3stack"]["mutate"]
    base = pyproject.parent
    return Settings(float(conf["threshold"]), base / conf["equivalents"], base / conf["report"], conf["modules"])


def function_prefix(module: str, function: str) -> str:
    """The start of every mutant name of one function (or Class.method) of k3stack/<module>.py."""
    if "." in function:
        cls, method = function.split(".", 1)
        return f"{PACKAGE}.{module}.xǁ{cls}ǁ{method}__mutmut_"
    return f"{PACKAGE}.{module}.x_{function}__mutmut_"


def patterns(modules: dict[str, list[str] | str]) -> list[str]:
    """mutmut's mutant-name patterns (fnmatch) for the functions that count; passed to `mutmut run`."""
    out = []
    for module, functions in modules.items():
        if functions == "*":
            out.append(f"{PACKAGE}.{module}.*")
        else:
            # `x_name*` also matches the function's mangled name, so mutmut runs the tests that call it
            # (it may match another function whose name starts alike: `score` counts only these)
            out += [function_prefix(module, f).removesuffix("__mutmut_") + "*" for f in functions]
    return out


def in_scope(name: str, module: str, functions: list[str] | str) -> bool:
    if functions == "*":
        return name.startswith(f"{PACKAGE}.{module}.")
    return any(name.startswith(function_prefix(module, f)) for f in functions)


def rerun(module: str, functions: list[str] | str, results: dict[str, int | None]) -> list[str]:
    """The in-scope mutants of a module that no test has killed yet (survived, no tests, not run)."""
    return [n for n, code in sorted(results.items()) if in_scope(n, module, functions) and code not in DETECTED]


def read_equivalents(path: Path) -> dict[str, str]:
    """{mutant name: why it cannot be told apart from the code}: one per line, `NAME  reason`;
    blank lines and lines starting with # are skipped. A line without a reason is an error."""
    found: dict[str, str] = {}
    if not path.exists():
        return found
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise ValueError(f"{path.name}:{number}: {name} has no reason — say why it is equivalent")
        found[name] = reason.strip()
    return found


def mutmut_results(module: str, mutants_dir: Path = ROOT / "mutants") -> dict[str, int | None]:
    """{mutant name: mutmut's exit code (None: not run yet)} from mutmut's record of one module."""
    meta = mutants_dir / PACKAGE / f"{module}.py.meta"
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


@dataclass
class ModuleScore:
    module: str
    killed: list[str] = field(default_factory=list)
    survived: list[tuple[str, str]] = field(default_factory=list)  # (name, mutmut's status)
    equivalent: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    not_run: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.killed) + len(self.survived) + len(self.equivalent) + len(self.not_run)

    @property
    def score(self) -> float:
        """Killed mutants as a percentage of those that could be killed (equivalents left out)."""
        counted = self.total - len(self.equivalent)
        return 100.0 * len(self.killed) / counted if counted else 100.0


def score(module: str, functions: list[str] | str, results: dict[str, int | None], equivalents: dict[str, str]):
    """One module's ModuleScore from mutmut's results, counting only the functions in scope."""
    out = ModuleScore(module)
    for name in sorted(results, key=_natural):
        if not in_scope(name, module, functions):
            continue
        code = results[name]
        if code is None or (code not in DETECTED and code not in UNDETECTED):
            out.not_run.append(name)
        elif code in DETECTED:
            out.killed.append(name)
        elif name in equivalents:
            out.equivalent.append((name, equivalents[name]))
        else:
            out.survived.append((name, UNDETECTED[code]))
    return out


def stale_equivalents(scores: list[ModuleScore], equivalents: dict[str, str]) -> list[str]:
    """Listed equivalents of the scored modules that are no survivor (killed now, or renumbered)."""
    modules = {s.module for s in scores}
    listed = {n for n in equivalents if n.split(".")[1] in modules}
    return sorted(listed - {n for s in scores for n, _ in s.equivalent}, key=_natural)


def overall(scores: list[ModuleScore]) -> float:
    counted = sum(s.total - len(s.equivalent) for s in scores)
    return 100.0 * sum(len(s.killed) for s in scores) / counted if counted else 100.0


def render(scores: list[ModuleScore], stale: list[str], threshold: float, seconds: float, when: str) -> str:
    """The Markdown report: a table per module and overall, then every survivor and equivalent."""
    lines = [
        "# Mutation testing",
        "",
        f"`inv mutate` (mutmut, unit tier) on {when}, {seconds:.0f} s wall. Score = killed / (mutants − "
        f"equivalents); it must be ≥ {threshold:g} %. A survivor is shown with `mutmut show NAME`.",
        "",
        "| module | mutants | killed | survived | equivalent | not run | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(
            f"| {s.module} | {s.total} | {len(s.killed)} | {len(s.survived)} | {len(s.equivalent)} | "
            f"{len(s.not_run)} | {s.score:.1f} % |"
        )
    total = sum(s.total for s in scores)
    killed, survived = sum(len(s.killed) for s in scores), sum(len(s.survived) for s in scores)
    equivalent, not_run = sum(len(s.equivalent) for s in scores), sum(len(s.not_run) for s in scores)
    lines.append(
        f"| **all** | {total} | {killed} | {survived} | {equivalent} | {not_run} | **{overall(scores):.1f} %** |"
    )
    survivors = [f"- `{n}` ({status})" for s in scores for n, status in s.survived]
    lines += ["", f"## Survivors ({len(survivors)})", "", *(survivors or ["none"])]
    equivalents = [f"- `{n}` — {why}" for s in scores for n, why in s.equivalent]
    heading = f"## Equivalent ({len(equivalents)}, from tests/mutation_equivalents.txt)"
    lines += ["", heading, "", *(equivalents or ["none"])]
    if stale:
        lines += ["", "## Stale entries of tests/mutation_equivalents.txt (killed or renumbered)", ""]
        lines += [f"- `{n}`" for n in stale]
    return "\n".join(lines) + "\n"


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return (stem, int(number)) if number.isdigit() else (name, 0)
