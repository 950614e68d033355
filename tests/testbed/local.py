"""Local programs the test bed drives (ip, ssh-keygen, etcd, ...), through `sh`.

`sh` raises one exception class per exit code with the whole output attached; the bed turns
those into one-line `BedError`s naming the command and its last stderr line, so a failing
bed says what went wrong instead of dumping a traceback of sh internals.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

import sh


class BedError(RuntimeError):
    """The test bed could not be set up or torn down; the message says why."""


def _last_line(text: bytes | str | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: str | None = None) -> str:
    """Run a local program to completion and return its stdout; raise BedError on failure."""
    program, *args = argv
    try:
        command = sh.Command(program)
    except sh.CommandNotFound:
        raise BedError(f"{program}: not installed (fix: inv setup, as root)") from None
    kwargs: dict = {"_env": dict(env) if env is not None else None, "_in": stdin}
    try:
        return str(command(*args, **{k: v for k, v in kwargs.items() if v is not None}))
    except sh.ErrorReturnCode as exc:
        raise BedError(
            f"`{' '.join(argv)}` exited {exc.exit_code}: {_last_line(exc.stderr) or _last_line(exc.stdout)}"
        ) from None


def start(argv: Sequence[str], *, log_path: str, env: Mapping[str, str] | None = None):
    """Start a long-running local program in the background; stdout+stderr go to log_path.

    Returns sh's RunningCommand; its `.pid` is what the bed records for teardown.
    """
    program, *args = argv
    try:
        command = sh.Command(program)
    except sh.CommandNotFound:
        raise BedError(f"{program}: not installed (fix: inv setup, as root)") from None
    log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - sh writes to it after we return
    return command(
        *args,
        _bg=True,
        _bg_exc=False,
        _out=log,
        _err_to_out=True,
        _env=dict(env) if env is not None else dict(os.environ),
        _new_session=True,
    )


def have(program: str) -> bool:
    return shutil.which(program) is not None
