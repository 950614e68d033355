"""Tasks import what they use: `inv --list` loads no kubernetes client, fabric or paramiko
(~1 s of start-up between them), and bootstrap's errors do not pull paramiko into cluster tasks.
Measured in a child process: a sitecustomize writes the loaded modules at exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_modules(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    (tmp_path / "test.env").write_text("DOMAIN=203.0.113.10.sslip.io\nACME_EMAIL=ops@example.com\n")
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG"))}
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    environ["K3STACK_ENV_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, env=environ, capture_output=True, timeout=120
    )
    assert b"Traceback" not in done.stderr, done.stderr
    return {m.split(".")[0] for m in json.loads(out.read_text())}


@pytest.mark.parametrize(
    ("args", "absent"),
    [
        (("--list",), {"kubernetes", "fabric", "paramiko", "rich"}),
        (("deploy", "--timeout", "x"), {"kubernetes", "fabric", "paramiko"}),  # a usage error loads nothing
        (("status", "--env", "nonexistent"), {"fabric", "paramiko"}),
        (("bootstrap", "--env", "nonexistent"), {"kubernetes"}),  # reporting its error loads no client
        (("render", "--env", "test"), {"kubernetes", "fabric", "paramiko"}),  # rendering needs no cluster
    ],
    ids=["list", "bad-flag", "cluster-task", "host-task", "render"],
)
def test_a_task_loads_only_what_it_uses(tmp_path, args, absent):
    loaded = loaded_modules(tmp_path, *args)
    assert not (loaded & absent), f"inv {' '.join(args)} loaded {sorted(loaded & absent)}"
