"""Which secrets the stack has and where each comes from — the settings, the cluster (kept from an
earlier deploy) or generated now (a first deploy would create it) — with values redacted; or
exported to a private env file (mode 0600), e.g. to keep a copy beside a backup.

    python -m scripts.secrets [--env NAME] [--kubeconfig PATH] [--context NAME]
    python -m scripts.secrets --export secrets.env      # values, 0600 from the first byte

Reads only: nothing is written to the cluster. Exit status 0, or 1 with one error line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from k3stack import secrets as stack_secrets
from k3stack import settings as stack_settings
from k3stack.console import Console
from k3stack.kube import Kube, KubeError
from k3stack.secrets import LOCATIONS, SecretsError, decode
from k3stack.settings import SettingsError

ORIGINS = {
    "settings": "the settings (env file or environment)",
    "cluster": "the cluster (kept from an earlier deploy)",
    "generated": "generated now (not in the cluster yet: a deploy creates it)",
}


def _reader(kube: Kube):
    def read(namespace: str, name: str) -> dict[str, str] | None:
        found = kube.get("v1", "Secret", name, namespace)
        return decode(found) if found else None

    return read


def rows(settings, resolved) -> list[list[str]]:
    """One row per secret setting: setting, Secret (namespace/name key), origin, value (redacted later)."""
    table = []
    for setting, (namespace_setting, name, key) in LOCATIONS.items():
        origin = resolved.origins.get(setting, "-")
        table.append([setting, f"{settings[namespace_setting]}/{name} {key}", ORIGINS.get(origin, origin)])
    return table


def export(path: Path, values: dict[str, str]) -> None:
    """`SETTING='value'` lines (python-dotenv reads them back literally) into a new 0600 file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC: tighten it
    with os.fdopen(fd, "w") as out:
        for setting in LOCATIONS:
            value = values[setting].replace("\\", "\\\\").replace("'", "\\'")
            out.write(f"{setting}='{value}'\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", help="settings file env/NAME.env (default: $K3STACK_ENV, else 'default')")
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: KUBE_CONTEXT, else the current one)")
    parser.add_argument("--export", metavar="FILE", help="write the values to FILE (mode 0600) instead of a table")
    args = parser.parse_args(argv)
    console = Console()
    try:
        loaded = stack_settings.load(args.env)
        kube = Kube(args.kubeconfig, args.context or loaded["KUBE_CONTEXT"] or None)
        resolved = stack_secrets.resolve(loaded, _reader(kube))
    except (SettingsError, SecretsError, KubeError) as exc:
        console.error(str(exc))
        return 1
    console.add_secrets(resolved.values.values())
    if args.export:
        export(Path(args.export), resolved.values)
        console.line(f"wrote {len(LOCATIONS)} secrets to {args.export} (mode 0600)")
        if fresh := [s for s, origin in resolved.origins.items() if origin == "generated"]:
            console.warn(f"{', '.join(fresh)}: not in the cluster yet; the values written were generated just now")
        return 0
    console.table("secrets", ["setting", "kept in (namespace/Secret key)", "comes from"], rows(loaded, resolved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
