"""One reader for every file k3stack parses: env files, kubeconfigs, k8s/ YAML templates.

Whatever goes wrong while reading or parsing (missing, unreadable, not UTF-8, a line python-dotenv
cannot parse, YAML that does not scan) comes out as one ReadError whose str() is
`file:line: what — fix: how`. File content is never quoted in a message: env files and
kubeconfigs hold secrets.

Imports only PyYAML and python-dotenv (no kubernetes client): `inv render` uses it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import K3stackError

YAML_FIX = "correct the YAML at that line (indentation, a missing quote, bracket or colon)"
# libyaml's loader when PyYAML was built with it (the wheels are): the same safe constructor and
# marks, ten times faster than the pure-Python one (measured on k8s/llm-stack/open-webui.yaml:
# 5 ms against 48 ms), which `inv render` and the property tests feel.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ReadError(K3stackError, ValueError):
    """A file could not be read or parsed. `source` is the name shown (a path, or host:path),
    `line` the 1-based line (None when the problem is the whole file)."""

    def __init__(self, source: str, line: int | None, what: str, hint: str):
        self.source, self.line = source, line
        super().__init__(f"{source}{f':{line}' if line else ''}: {what}", hint)


@dataclass(frozen=True)
class Document:
    """One YAML document of a file and the 1-based line it starts on."""

    value: Any
    line: int


def read_text(path: Path, *, shown: str | None = None) -> str:
    """The text of `path` (UTF-8; a leading byte order mark dropped). Raises ReadError for a file
    that is missing, a directory, unreadable, or not UTF-8 (naming the line of the first bad byte)."""
    shown = shown or str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReadError(shown, None, "does not exist", "check the path (or create the file)") from None
    except IsADirectoryError:
        raise ReadError(shown, None, "is a directory, not a file", "name the file itself") from None
    except OSError as exc:
        raise ReadError(
            shown, None, f"cannot be read ({exc.strerror or exc})", "make it readable to this user (chmod/chown)"
        ) from None
    return decode(data, shown)


def decode(data: bytes, shown: str) -> str:
    """`data` as UTF-8 text (BOM dropped); ReadError naming the line of the first invalid byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ReadError(
            shown, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})", "save the file as UTF-8"
        ) from None


def env_values(path: Path, *, shown: str | None = None) -> dict[str, str | None]:
    """NAME -> value of an env file, parsed by python-dotenv's own parser, values literal (no
    ${VAR} interpolation; `NAME` alone gives None). Same result as
    `dotenv_values(path, interpolate=False)`, except that a line python-dotenv cannot parse (which
    it would only log and skip) raises ReadError with its line."""
    from dotenv.parser import parse_stream

    shown = shown or str(path)
    values: dict[str, str | None] = {}
    bad: list[int] = []  # every line that does not parse, not just the first
    for binding in parse_stream(io.StringIO(read_text(path, shown=shown))):
        if binding.error:
            bad.append(binding.original.line)
        elif binding.key is not None:
            values[binding.key] = binding.value
    if bad:
        also = f" (also line{'s' if len(bad) > 2 else ''} {', '.join(map(str, bad[1:]))})" if len(bad) > 1 else ""
        raise ReadError(
            shown,
            bad[0],
            f"cannot parse this line{also}",
            "write NAME=value, quote a value holding spaces, # or quotes ('...'), and close every quote",
        )
    return values


def _yaml_error(exc: yaml.YAMLError, shown: str, hint: str) -> ReadError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    return ReadError(shown, mark.line + 1 if mark else None, f"not valid YAML ({problem})", hint)


Transform = Callable[[yaml.Node, yaml.SafeLoader], None]  # (node, loader)


def plain_style_as_none(node: yaml.Node) -> None:
    """Give plain scalars the style None, as PyYAML's own parser does (libyaml's says ''), so a
    transform sees the same nodes under either parser. Anchored nodes are visited once."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.ScalarNode):
            if current.style == "":
                current.style = None
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            stack.extend(item for pair in current.value for item in pair)


def yaml_documents(
    text: str, shown: str, *, transform: Transform | None = None, hint: str = YAML_FIX
) -> list[Document]:
    """Every non-empty YAML document of `text` (safe_load semantics), with the line each starts on.
    `transform(node, loader)` may rewrite a document's node tree before it is constructed (k8s/
    ${VARS} substitution). Raises ReadError `shown:line: not valid YAML (problem) — fix: hint`."""
    loader = SafeLoader(text)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if transform is not None:
                plain_style_as_none(node)
                transform(node, loader)
            value = loader.construct_document(node)
            if value is not None:
                documents.append(Document(value, node.start_mark.line + 1))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, shown, hint) from None
    finally:
        loader.dispose()
    return documents


def yaml_file(path: Path, *, shown: str | None = None, transform: Transform | None = None) -> list[Document]:
    """`yaml_documents` of the file at `path` (read with `read_text`); ReadError for any problem."""
    shown = shown or str(path)
    return yaml_documents(read_text(path, shown=shown), shown, transform=transform)


def yaml_document(text: str, shown: str, *, hint: str = YAML_FIX) -> Any:
    """The single YAML document of `text` (None when empty). Raises ReadError for invalid YAML or
    for more than one document (`---` separating several)."""
    documents = yaml_documents(text, shown, hint=hint)
    if len(documents) > 1:
        raise ReadError(
            shown, documents[1].line, f"holds {len(documents)} YAML documents, expected one", "keep only one"
        )
    return documents[0].value if documents else None
