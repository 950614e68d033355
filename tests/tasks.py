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
