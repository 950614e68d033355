"""The test tasks (`inv setup`, `inv test`, `inv lint`): the suite's own front door, next to the
suite. tasks.py adds them to the menu."""

from __future__ import annotations

import shlex
import sys

from invoke import Exit, task

from k3stack.face import console


@task(name="setup")
def setup_tests(c):
    """Install what the tests need (system packages, linters, the test bed's builds); seconds when done."""
    from tests.provision import is_root, provision

    out = console()
    out.step("setting up the test prerequisites" + ("" if is_root() else " (not root: checking only)"))
    outcomes = provision(lambda o: out.result(o.step, o.status, o.detail), announce=out.line)
    if any(o.status == "failed" for o in outcomes):
        out.error("setup failed (the step above says why), so no test ran — fix it and run again")
        raise Exit(code=1)
    if any(o.status == "missing" for o in outcomes):
        out.warn("missing prerequisites: their tests skip (or fail under CI); run `inv setup` as root")


@task(
    name="test",
    help={
        "k": "only tests matching this pytest -k expression",
        "path": "a test file or folder (default: all of tests/)",
        "require_testbed": "fail, not skip, when a tier or tool cannot run (default when CI=true)",
        "setup": "install what the tests need first, as `inv setup` does (default: on; --no-setup skips it)",
    },
)
def run_tests(c, k=None, path="tests", require_testbed=False, setup=True):
    """Run the test suite (lint, unit, a real Kubernetes API, real SSH hosts), set up first."""
    if setup:
        setup_tests(c)
    env = {"K3STACK_REQUIRE_TESTBED": "1"} if require_testbed else {}
    args = [sys.executable, "-m", "pytest", path] + (["-k", k] if k else [])
    result = c.run(shlex.join(args), env=env, pty=False, warn=True)
    if result.exited == 5:  # pytest: no test was collected — a broken suite, never a pass
        console().error(f"no tests collected from {path}" + (f" with -k {k!r}" if k else ""))
        raise Exit(code=1)
    if result.exited:
        raise Exit(code=result.exited)


@task
def lint(c):
    """Check style and common bugs with ruff (lint + format check)."""
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    c.run(f"{sys.executable} -m ruff format --check .", pty=False)


@task(
    name="mutate",
    help={
        "module": "only these modules of [tool.k3stack.mutate.modules] in pyproject.toml, comma-separated "
        "(e.g. retry,kinds); default: all",
        "survivors": "run again only the mutants the last run left alive (after writing tests that kill them)",
    },
)
def mutate(c, module=None, survivors=False):
    """Mutation testing (mutmut) of the pure modules with the unit tier; a report, exit 1 under the threshold."""
    import time
    from datetime import UTC, datetime

    from tests import mutation

    out = console()
    conf = mutation.settings()
    names = [m.strip() for m in module.split(",") if m.strip()] if module else list(conf.modules)
    unknown = [m for m in names if m not in conf.modules]
    if unknown or not names:
        out.error(f"--module {module!r}: expected one or more of {', '.join(conf.modules)}")
        raise Exit(code=2)
    modules = {m: conf.modules[m] for m in names}
    try:
        equivalents = mutation.read_equivalents(conf.equivalents)
    except ValueError as exc:
        out.error(str(exc))
        raise Exit(code=1) from None
    (mutation.ROOT / "mutants" / "env").mkdir(parents=True, exist_ok=True)  # mutmut copies env/example.env there
    out.step(f"mutating {', '.join(modules)} (mutmut, niced; the unit tests of pyproject's [tool.mutmut])")
    names = mutation.patterns(modules)
    if survivors:
        names = [n for m, f in modules.items() for n in mutation.rerun(m, f, mutation.mutmut_results(m))]
    args = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", *names]
    started = time.monotonic()
    result = c.run(shlex.join(args), pty=False, warn=True) if names else None
    seconds = time.monotonic() - started
    if result is not None and result.exited:
        out.error(f"mutmut stopped with exit {result.exited} (above: why; a failing unit test stops it too)")
        raise Exit(code=1)
    scores = [mutation.score(m, f, mutation.mutmut_results(m), equivalents) for m, f in modules.items()]
    stale = mutation.stale_equivalents(scores, equivalents)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    when += ", --survivors: the last survivors again" if survivors else ""
    conf.report.write_text(mutation.render(scores, stale, conf.threshold, seconds, when))
    for s in scores:
        out.line(
            f"{s.module}: {s.score:.1f} % ({len(s.killed)} killed, {len(s.survived)} survived, "
            f"{len(s.equivalent)} equivalent of {s.total})"
        )
    total = mutation.overall(scores)
    out.line(f"score {total:.1f} % (threshold {conf.threshold:g} %) in {seconds:.0f} s; report: {conf.report}")
    for name in stale:
        out.warn(f"{conf.equivalents.name}: {name} is no survivor any more (killed, or renumbered): update the list")
    if any(s.not_run for s in scores):
        out.error("some mutants were not run (mutmut interrupted?): run `inv mutate` again")
        raise Exit(code=1)
    if total < conf.threshold:
        out.error(
            f"mutation score {total:.1f} % is under {conf.threshold:g} %: kill the survivors listed in "
            f"{conf.report} with a test, or list them as equivalent with a reason in {conf.equivalents.name}"
        )
        raise Exit(code=1)
