"""Print one context of a kubeconfig as a self-contained file, base64-encoded, for a CI secret.

    python -m scripts.kubeconfig_secret --context k3stack | gh secret set KUBECONFIG --env production

File references (certificate-authority, client-certificate, client-key) are inlined so the
secret works on a runner. It refuses to print to a terminal: the output holds credentials.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import yaml

from k3stack.errors import K3stackError

INLINE = {
    "certificate-authority": "certificate-authority-data",
    "client-certificate": "client-certificate-data",
    "client-key": "client-key-data",
}


class ScriptError(K3stackError):
    """A kubeconfig this script cannot export: `what` names the file and problem, `hint` the fix."""


def _named(config: dict, section: str, name: str, path: Path) -> dict:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return entry
    raise ScriptError(f"{path}: no {section[:-1]} named {name!r}", "check `kubectl config get-contexts`")


def _inline(body: dict, base: Path) -> dict:
    body = dict(body)
    for key, data_key in INLINE.items():
        if key in body:
            file = Path(body.pop(key)).expanduser()
            file = file if file.is_absolute() else base / file
            try:
                body[data_key] = base64.b64encode(file.read_bytes()).decode()
            except OSError as exc:
                raise ScriptError(
                    f"{file}: cannot read ({exc.strerror})", "the kubeconfig points at a missing file"
                ) from None
    return body


def minified(path: Path, context: str | None) -> dict:
    """The kubeconfig with only `context` (default: the current one), its cluster and user."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read ({exc.strerror})", "pass --kubeconfig") from None
    except yaml.YAMLError:
        raise ScriptError(f"{path}: not valid YAML", "pass the right --kubeconfig") from None
    name = context or config.get("current-context")
    if not name:
        raise ScriptError(f"{path}: no current context", "pass --context NAME")
    ctx = _named(config, "contexts", name, path)
    cluster = _named(config, "clusters", ctx["context"]["cluster"], path)
    user = _named(config, "users", ctx["context"]["user"], path)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster["name"], "cluster": _inline(cluster["cluster"], path.parent)}],
        "users": [{"name": user["name"], "user": _inline(user["user"], path.parent)}],
        "contexts": [ctx],
        "current-context": name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
    parser.add_argument(
        "--kubeconfig", default=default, help="kubeconfig to read (default: $KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument("--context", help="context to export (default: the current context)")
    args = parser.parse_args(argv)
    if sys.stdout.isatty():
        print("error: the output holds credentials; pipe it, e.g. into `gh secret set KUBECONFIG`", file=sys.stderr)
        return 2
    try:
        config = minified(Path(args.kubeconfig).expanduser(), args.context)
    except ScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(base64.b64encode(yaml.safe_dump(config, sort_keys=False).encode()).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
