"""All output of k3stack goes through here: people get tables and progress bars, CI gets plain
lines (and JSON where asked); every secret value registered is redacted from everything printed."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

REDACTED = "<redacted>"
ACTION_STYLE = {
    "created": "green",
    "configured": "yellow",
    "unchanged": "dim",
    "pruned": "magenta",
    "failed": "bold red",
    "ok": "green",
    "changed": "yellow",
}


class Console:
    """The one printer. Results and tables go to `stream` (stdout); errors and warnings to
    `err_stream` (stderr), so `inv render > objects.yaml` keeps problems out of the file and on
    the screen. Given only `stream` (tests), both go there. Error and warning lines are never
    hard-wrapped, so a long URL or path in them stays copyable."""

    def __init__(self, *, stream=None, err_stream=None, interactive: bool | None = None, plain_interval: float = 10.0):
        if stream is None:
            stream, err_stream = sys.stdout, err_stream or sys.stderr
        err_stream = err_stream or stream
        ci = os.environ.get("CI", "").lower() in ("true", "1")
        if interactive is None:
            interactive = stream.isatty() and not ci
        self.interactive = interactive
        self._rich = self._make(stream, interactive)
        if err_stream is stream:
            self._err = self._rich
        else:
            self._err = self._make(err_stream, err_stream.isatty() and not ci)
        self._secrets: set[str] = set()
        self._lock = threading.RLock()  # lines from worker threads (parallel pulls) stay whole
        self.plain_interval = plain_interval  # seconds between two progress lines in CI

    @staticmethod
    def _make(stream, interactive: bool) -> RichConsole:
        return RichConsole(
            file=stream,
            force_terminal=interactive,
            no_color=not interactive,
            highlight=False,
            soft_wrap=not interactive,
            width=None if interactive else 200,
        )

    # -- redaction -------------------------------------------------------------------------
    def add_secrets(self, values: Iterable[str]) -> None:
        """Register values to redact from everything printed from now on (shorter than 4 characters are ignored)."""
        self._secrets.update(v for v in values if v and len(v) >= 4)

    def redact(self, text: str) -> str:
        """`text` with every registered secret replaced by <redacted>, longest first."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    # -- lines -----------------------------------------------------------------------------
    def line(self, text: str = "", style: str | None = None) -> None:
        """One line to stdout (redacted); whole even when worker threads print at once."""
        with self._lock:
            self._rich.print(self.redact(text), style=style, markup=False)

    def step(self, text: str) -> None:
        """A phase heading: `==> text`."""
        self.line(f"==> {text}", style="bold")

    def note(self, text: str) -> None:
        """A status line that is not the task's output (it goes where errors go: stderr)."""
        self._problem(f"==> {text}", style="bold")

    def error(self, text: str) -> None:
        """`error: text` on stderr, never wrapped."""
        self._problem(f"error: {text}", style="bold red")

    def warn(self, text: str) -> None:
        """`warning: text` on stderr, never wrapped."""
        self._problem(f"warning: {text}", style="yellow")

    def _problem(self, text: str, style: str) -> None:
        with self._lock:
            self._err.print(self.redact(text), style=style, markup=False, soft_wrap=True)

    def json(self, data) -> None:
        """`data` as indented JSON on stdout (redacted), for CI."""
        self._rich.file.write(self.redact(json.dumps(data, indent=2, sort_keys=True)) + "\n")

    def document(self, text: str) -> None:
        """The task's product as it is (render's YAML) on stdout: not styled, not wrapped, not
        redacted (render redacts Secret data itself unless asked to show it)."""
        with self._lock:
            self._rich.file.write(text)

    def result(self, what: str, action: str, detail: str = "") -> None:
        """kubectl's shape: `deployment.apps/ollama configured`."""
        text = f"{what} {action}" + (f" {detail}" if detail else "")
        self.line(text, style=ACTION_STYLE.get(action.split(" ")[0]))

    def table(self, title: str, columns: list[str], rows: Iterable[Iterable[str]]) -> None:
        """A table for people (plain aligned text in CI); every cell redacted."""
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(self.redact(str(cell)) for cell in row))
        self._rich.print(table)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Progress | None]:
        """A progress bar for a person; nothing for CI (callers print plain lines instead)."""
        if not self.interactive:
            yield None
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self._rich,
            transient=True,
        ) as progress:
            progress.add_task(description, total=total)
            yield progress

    @contextmanager
    def pull_progress(self, models: list[str]) -> Iterator[Callable]:
        """Download progress for several models at once; yields the callback to feed with
        events (objects with model, status, completed, total, done — k3stack.ollama.Progress).
        A person gets one bar per model (bytes, rate, ETA); CI gets a plain line per model
        when its phase changes and at most every `plain_interval` seconds while downloading."""
        if self.interactive:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self._rich,
            ) as bars:
                tasks = {m: bars.add_task(m, total=None, status="waiting") for m in models}

                def update(event) -> None:
                    task = tasks.get(event.model)
                    if task is None:
                        task = tasks[event.model] = bars.add_task(event.model, total=None, status="")
                    status = self.redact(event.status)[:60]
                    if event.done and event.total:
                        bars.update(task, completed=event.total, total=event.total, status=status)
                    else:
                        bars.update(task, completed=event.completed, total=event.total or None, status=status)

                yield update
            return
        yield _PlainProgress(self).update


class _PlainProgress:
    """Plain progress lines for logs: phase changes always, byte counts now and then."""

    def __init__(self, console: Console):
        self.console = console
        self.seen: dict[str, tuple[str, float, int]] = {}  # model -> (phase, time, bytes) last printed

    def update(self, event) -> None:
        now = time.monotonic()
        phase = "downloading" if event.status.startswith("pulling ") and event.total else event.status
        last_phase, last_time, last_bytes = self.seen.get(event.model, ("", now, 0))
        if phase == last_phase and (phase != "downloading" or now - last_time < self.console.plain_interval):
            return
        self.seen[event.model] = (phase, now, event.completed)
        if phase != "downloading":
            self.console.line(f"{event.model}: {event.status}")
            return
        percent = 100 * event.completed // event.total
        text = f"{event.model}: {human_size(event.completed)} of {human_size(event.total)} ({percent}%)"
        if last_phase == "downloading" and now > last_time and event.completed > last_bytes:
            rate = (event.completed - last_bytes) / (now - last_time)
            text += f", {human_size(rate)}/s, about {_duration((event.total - event.completed) / rate)} left"
        self.console.line(text)


def human_size(n: float) -> str:
    """Bytes as text in SI units (1000-based, as Ollama and kubectl print): `512 B`, `1.5 GB`."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
