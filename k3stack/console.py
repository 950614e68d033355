"""All output of k3stack goes through here: people get tables and progress bars, CI gets plain
lines (and JSON where asked); every secret value registered is redacted from everything printed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console as RichConsole
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
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
    def __init__(self, *, stream=None, interactive: bool | None = None):
        stream = stream or sys.stdout
        if interactive is None:
            interactive = stream.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")
        self.interactive = interactive
        self._rich = RichConsole(
            file=stream,
            force_terminal=interactive,
            no_color=not interactive,
            highlight=False,
            soft_wrap=not interactive,
            width=None if interactive else 200,
        )
        self._secrets: set[str] = set()

    # -- redaction -------------------------------------------------------------------------
    def add_secrets(self, values: Iterable[str]) -> None:
        self._secrets.update(v for v in values if v and len(v) >= 4)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    # -- lines -----------------------------------------------------------------------------
    def line(self, text: str = "", style: str | None = None) -> None:
        self._rich.print(self.redact(text), style=style, markup=False)

    def step(self, text: str) -> None:
        self.line(f"==> {text}", style="bold")

    def error(self, text: str) -> None:
        self.line(f"error: {text}", style="bold red")

    def warn(self, text: str) -> None:
        self.line(f"warning: {text}", style="yellow")

    def json(self, data) -> None:
        self._rich.file.write(self.redact(json.dumps(data, indent=2, sort_keys=True)) + "\n")

    def result(self, what: str, action: str, detail: str = "") -> None:
        """kubectl's shape: `deployment.apps/ollama configured`."""
        text = f"{what} {action}" + (f" {detail}" if detail else "")
        self.line(text, style=ACTION_STYLE.get(action.split(" ")[0]))

    def table(self, title: str, columns: list[str], rows: Iterable[Iterable[str]]) -> None:
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
