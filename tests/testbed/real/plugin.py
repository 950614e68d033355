"""pytest fixture `real_stack`: the stack deployed to the bed with its real components (stack.py),
shared by the whole run (Open WebUI's cold start is ~30 s and ~870 MB). Skips with the install
command when the components are missing (a failure under K3STACK_REQUIRE_TESTBED=1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..plugin import unavailable
from . import missing
from .stack import RealStack

MODELS = ["llama3.1:8b", "mistral:7b", "nomic-embed-text:v1.5"]  # the embedding model too, as deploy pulls it
ADMIN_PASSWORD = "admin password with spaces & 'quotes'"
NETDATA_PASSWORD = "netdata-password-for-smoke"
REDIS_PASSWORD = 'redis "pass word" with \\ and # and spaces'


@pytest.fixture(scope="session")
def real_stack(request) -> Iterator[RealStack]:
    if reason := missing():  # before the bed starts: nothing to wait for when this skips
        unavailable(reason)
    stack = RealStack.create(
        request.getfixturevalue("kube"),
        models=MODELS,
        WEBUI_ADMIN_PASSWORD=ADMIN_PASSWORD,
        NETDATA_PASSWORD=NETDATA_PASSWORD,
        REDIS_PASSWORD=REDIS_PASSWORD,
    )
    try:
        stack.deploy()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # what a first start costs here, on the run's own machine
            started = ", ".join(f"{c.name} {c.started_seconds:.0f}s" for c in stack.components.values())
            reporter.write_line(f"\nreal stack ready (first start): {started}")
        yield stack
    finally:
        stack.close()
