"""The stack's real components in the test bed (TESTBED.md "The stack's own components"): real
Open WebUI (PyPI, the image tag's version), PostgreSQL 15, redis-server and Netdata from Debian,
each run from the objects `deploy` applied, behind the stack's pods. Installed once, outside the
repo, by tests/testbed/install-components.sh."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CACHE = Path(os.environ.get("K3STACK_TESTBED_CACHE", Path.home() / ".cache" / "k3stack-testbed"))
PINS = Path(__file__).with_name("open-webui.txt")
INSTALL = "bash tests/testbed/install-components.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def webui_version() -> str:
    """The open-webui version pinned for the bed (tests/testbed/real/open-webui.txt)."""
    found = re.search(r"^open-webui\[postgres\]==(\S+)$", PINS.read_text(), re.MULTILINE)
    if not found:
        raise ValueError(f"{PINS}: no open-webui[postgres]==VERSION line")
    return found.group(1)


def webui_venv() -> Path:
    return CACHE / f"open-webui-{webui_version()}"


def missing() -> str | None:
    """Why the real components cannot run here (one line naming the fix), or None."""
    absent = [
        name
        for name, present in (
            ("postgresql-15", (PG_BIN / "postgres").exists() and (PG_BIN / "initdb").exists()),
            ("redis-server", shutil.which("redis-server") is not None),
            ("netdata", Path("/usr/sbin/netdata").exists()),
            (f"open-webui {webui_version()}", (webui_venv() / ".k3stack-installed").exists()),
        )
        if not present
    ]
    if absent:
        return f"real stack components not installed ({', '.join(absent)}): run `{INSTALL}` as root"
    return None
