"""k3stack's tasks. `inv --list` is the menu; each task's docstring says what it does for you."""

from __future__ import annotations

import sys

from invoke import task


@task(
    name="test",
    help={
        "k": "only tests matching this pytest -k expression",
        "path": "a test file or folder (default: all of tests/)",
        "require_testbed": "fail, not skip, when the kube/ssh test bed cannot run (CI sets this)",
    },
)
def run_tests(c, k=None, path="tests", require_testbed=False):
    """Run the test suite: unit tests, then a real Kubernetes API and real SSH hosts (needs root)."""
    env = {"K3STACK_REQUIRE_TESTBED": "1"} if require_testbed else {}
    args = [sys.executable, "-m", "pytest", path]
    if k:
        args += ["-k", k]
    c.run(" ".join(_quote(a) for a in args), env=env, pty=False)


@task
def lint(c):
    """Check style and common bugs with ruff (lint + format check)."""
    c.run(f"{sys.executable} -m ruff check .", pty=False)
    c.run(f"{sys.executable} -m ruff format --check .", pty=False)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
