"""One rule for a test whose prerequisite is missing (a tool, root, the bed's binaries): it skips
with the reason and the one command that removes it — or, where the run must be complete
(K3STACK_REQUIRE_TESTBED=1, `inv test --require-testbed`, or CI=true), it fails with the same line.
"""

from __future__ import annotations

import os

import pytest

FIX = "inv setup (as root)"


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def required() -> bool:
    """True when a missing prerequisite must fail the run instead of skipping (CI, --require-testbed)."""
    return _on("K3STACK_REQUIRE_TESTBED") or _on("CI")


def unavailable(reason: str, fix: str = FIX) -> None:
    """Skip (or, when required(), fail) the current test: `<reason>; fix: <fix>`. Never returns."""
    message = f"{reason}; fix: {fix}"
    if required():
        pytest.fail(f"required (CI / --require-testbed) but unavailable: {message}", pytrace=False)
    pytest.skip(message)
