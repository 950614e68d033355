"""What a host is like, read in one round trip before anything is changed (pyinfra's facts)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .connection import Host

STATE_FILE = "/var/lib/k3stack/state.json"
TOKEN_FILE = "/var/lib/rancher/k3s/server/token"

# Prints key=value lines; each probe tolerates a missing tool so one gap does not hide the rest.
_PROBE = r"""
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os=${ID:-unknown}"
echo "os_like=${ID_LIKE:-}"
echo "os_version=${VERSION_ID:-}"
echo "os_name=${PRETTY_NAME:-unknown}"
echo "arch=$(uname -m)"
if [ -d /run/systemd/system ]; then echo init=systemd
elif [ -x /sbin/openrc-run ]; then echo init=openrc
else echo init=none; fi
echo "downloader=$(command -v curl || command -v wget || true)"
d=/var/lib/rancher  # not created here: reading facts changes nothing; measure where it will be
while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "disk_free_kb=$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')"
echo "memory_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
echo "clock=$(date +%s)"
if command -v ss >/dev/null 2>&1; then
  listeners=$(ss -Hltnp | awk '{n=split($4, a, ":"); print a[n] "/" $6}')
else  # busybox (Alpine): netstat's columns
  listeners=$(netstat -ltnp 2>/dev/null | awk 'NR > 2 {n=split($4, a, ":"); print a[n] "/" $7}')
fi
echo "listeners=$(echo "$listeners" | tr '\n' ' ')"
echo "k3s_version=$( (k3s --version 2>/dev/null || true) | head -n1 | awk '{print $3}')"
for unit in k3s k3s-agent; do
  if command -v systemctl >/dev/null 2>&1; then
    systemctl is-active --quiet "$unit" 2>/dev/null && echo "active=$unit"
  elif command -v rc-service >/dev/null 2>&1; then
    rc-service "$unit" status >/dev/null 2>&1 && echo "active=$unit"
  fi
done
echo "state=$(cat __STATE__ 2>/dev/null | tr -d '\n')"
echo "has_token=$( [ -f __TOKEN__ ] && echo yes || echo no)"
""".replace("__STATE__", STATE_FILE).replace("__TOKEN__", TOKEN_FILE)


@dataclass(frozen=True)
class Facts:
    """What one round trip read from a host: OS, arch, init system, downloader, free disk and memory (GB),
    clock skew (s, host ahead of here), listening ports, K3s version and active units, k3stack's recorded state."""

    os: str
    os_like: str
    os_version: str
    os_name: str
    arch: str
    init: str
    downloader: str
    disk_free_gb: float
    memory_gb: float
    clock_skew: float  # seconds the host's clock is ahead of ours
    listeners: dict[int, str]  # port → process description ("" when unknown)
    k3s_version: str
    active_units: tuple[str, ...]
    state: dict = field(default_factory=dict)  # what k3stack last applied (desired-state hashes)
    has_token: bool = False


def gather(host: Host) -> Facts:
    """Read a host's Facts in one command (reads only: nothing is created on the host).
    Raises RemoteError when the host cannot run it."""
    before = time.time()
    out = host.run(_PROBE, what="reading host facts").stdout
    after = time.time()
    values: dict[str, str] = {}
    active: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "active":
            active.append(value)
        else:
            values[key] = value.strip()
    listeners: dict[int, str] = {}
    for item in values.get("listeners", "").split():
        port, _, process = item.partition("/")
        if port.isdigit():
            listeners.setdefault(int(port), process)
    try:
        state = json.loads(values.get("state") or "{}")
    except json.JSONDecodeError:
        state = {}  # unreadable state: treat as never applied, the next apply rewrites it
    return Facts(
        os=values.get("os", "unknown"),
        os_like=values.get("os_like", ""),
        os_version=values.get("os_version", ""),
        os_name=values.get("os_name", ""),
        arch=values.get("arch", ""),
        init=values.get("init", "none"),
        downloader=values.get("downloader", ""),
        disk_free_gb=int(values.get("disk_free_kb") or 0) / 1024**2,
        memory_gb=int(values.get("memory_kb") or 0) / 1024**2,
        clock_skew=int(values.get("clock") or 0) - (before + after) / 2,
        listeners=listeners,
        k3s_version=values.get("k3s_version", ""),
        active_units=tuple(active),
        state=state,
        has_token=values.get("has_token") == "yes",
    )
