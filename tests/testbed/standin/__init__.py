"""A stand-in for K3s on the ssh bed's test hosts: what get.k3s.io + the k3s binary do to a host,
with a REAL kube-apiserver (the bed's cached build) behind the host's IP.

- `installer_script()` -- the stand-in install.sh (POSIX sh, root; environment as for the real
  one: INSTALL_K3S_VERSION (required), INSTALL_K3S_EXEC, INSTALL_K3S_SKIP_START/_SKIP_ENABLE/
  _SKIP_DOWNLOAD, INSTALL_K3S_BIN_DIR, K3S_URL, K3S_TOKEN, ...). Its bytes are stable for this
  checkout on this machine: it bakes in this interpreter (`sys.executable`), the repo root
  (PYTHONPATH) and the bed's binary cache; the host's overlay root sees those paths.
- `prepare_host(host)` -- a `systemctl` shim (systemctl.sh) and /run/systemd/system, so the
  host looks like a systemd machine; `restarts(host, unit)` counts `systemctl restart <unit>`.
- k3s.py -- the program ${BIN_DIR}/k3s runs (`k3s server`, `k3s agent`, `k3s --version`,
  `k3s kubectl` / the kubectl symlink -> /usr/bin/kubectl with /etc/rancher/k3s/k3s.yaml); its
  own log lines go to /var/log/<unit>.log in K3s's format (time="..." level=... msg="..."), the
  components' to /var/lib/rancher/k3s/standin-logs/<component>.log. helm.py -- helm-controller.

Simplifications against real K3s: one CA signs clients and serving certs; the token's secret is
a bearer token of group system:masters (--token-auth-file); etcd is plain HTTP, runs on every
server that does not join, and joining servers use the first server's etcd instead of becoming
members; with cluster-init it lives in db/etcd (`k3s etcd-snapshot save` snapshots it through
etcd's v3 API), without it outside db/, while db/state.db is a real SQLite database in WAL mode
that the stand-in keeps writing, as kine does (the API server does not read it); the bootstrap
data joiners fetch with the token is the kube-system Secret k3s-standin-bootstrap; no kubelet,
containers, CNI or service load balancer: nodes, pods, PVCs and helm-install Jobs are simulated
(tests/testbed/nodesim.py); the API server is the bed's 1.20 build whatever INSTALL_K3S_VERSION
says (nodes report that version).
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..hosts import SshHost

HERE = Path(__file__).parent
REPO = HERE.parents[2]
SHIM_PATH = "/usr/local/bin/systemctl"
ACTIONS_LOG = "/var/log/standin-systemctl.log"


def _cache_dir() -> str:
    from ..kube import CACHE

    return str(CACHE)


def installer_script() -> bytes:
    """The stand-in install.sh; same bytes on every call for this checkout and machine."""
    template = (HERE / "install.sh.in").read_text()
    return (
        template.replace("@PYTHON@", sys.executable).replace("@REPO@", str(REPO)).replace("@CACHE@", _cache_dir())
    ).encode()


def installer_sha256() -> str:
    return hashlib.sha256(installer_script()).hexdigest()


def prepare_host(host: SshHost) -> None:
    """Install the systemctl shim and /run/systemd/system on `host` (idempotent)."""
    from tests.prereqs import unavailable

    from ..kube import cached_binaries

    if cached_binaries() is None:  # before `inv setup` built them
        unavailable("the stand-in K3s serves the bed's kube-apiserver build, which is not built yet")
    shim = (HERE / "systemctl.sh").read_text()
    host.exec(
        f"mkdir -p /run/systemd/system /usr/local/bin && printf '%s' {shlex.quote(shim)} > {SHIM_PATH}"
        f" && chmod 755 {SHIM_PATH}"
    )


def service_actions(host: SshHost, unit: str | None = None) -> list[tuple[str, str]]:
    """(action, unit) pairs from the shim's log, oldest first; `unit` filters ("k3s" or "k3s.service")."""
    text = host.exec(f"cat {ACTIONS_LOG} 2>/dev/null || true")
    wanted = unit.removesuffix(".service") if unit else None
    pairs = [tuple(line.split(maxsplit=1)) for line in text.splitlines() if line.strip()]
    return [(a, u) for a, u in pairs if wanted is None or u == wanted]


def restarts(host: SshHost, unit: str) -> int:
    """How many times `systemctl restart <unit>` ran on `host`."""
    return sum(1 for action, _ in service_actions(host, unit) if action == "restart")
