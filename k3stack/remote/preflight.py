"""Checks before anything changes: on this machine (settings, DNS) and per host (OS, arch, init
system, downloader, disk, memory, ports, clock). Findings are collected for a table; any
failure stops the run before the first host is touched."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .facts import Facts

SUPPORTED_OS = {"debian", "ubuntu", "raspbian", "rhel", "centos", "rocky", "almalinux", "fedora", "ol", "amzn"}
SUPPORTED_OS |= {"sles", "opensuse-leap", "opensuse-tumbleweed", "sl-micro", "alpine"}
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}
MIN_DISK_GB = 10.0
MIN_MEMORY_GB = 1.0  # K3s's own minimum is 512 MB for agents; the stack needs far more on some node
MAX_CLOCK_SKEW = 60.0
PORTS = (80, 443, 6443)


@dataclass(frozen=True)
class Finding:
    """One preflight result for a host (or `local`): status ok | warn | fail; a failure always has a fix."""

    host: str
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def connect_failure(name: str, exc: Exception) -> Finding:
    """A host that could not be reached or read: the error's own fix where it has one
    (K3stackError.hint), else the generic one — a failed finding never has an empty fix."""
    what = getattr(exc, "what", None) or str(exc)
    hint = getattr(exc, "hint", "") or "check that the host is reachable over SSH as that user and run again"
    return Finding(name, "connect", "fail", what.removeprefix(f"{name}: "), hint)


def check_host(name: str, facts: Facts, *, role: str, ours: bool, download: bool = True) -> list[Finding]:
    """`ours`: K3s on this host was installed by k3stack, so its own ports are expected busy;
    `download`: the installer downloads K3s (not airgap), so curl or wget is needed."""
    found: list[Finding] = []

    def add(check: str, ok: bool, detail: str, fix: str, warn_only: bool = False) -> None:
        found.append(Finding(name, check, "ok" if ok else ("warn" if warn_only else "fail"), detail, "" if ok else fix))

    os_ids = {facts.os, *facts.os_like.split()}
    add(
        "os",
        bool(os_ids & SUPPORTED_OS),
        facts.os_name,
        "use a distribution K3s supports (Debian, Ubuntu, RHEL-likes, SUSE, Alpine)",
    )
    add("arch", facts.arch in ARCHES, facts.arch, "K3s ships amd64, arm64 and armhf builds only")
    add("init", facts.init in ("systemd", "openrc"), facts.init, "K3s needs systemd or openrc to supervise it")
    if download:
        add("downloader", bool(facts.downloader), facts.downloader or "none", "install curl (apt-get install curl)")
    add(
        "disk",
        facts.disk_free_gb >= MIN_DISK_GB,
        f"{facts.disk_free_gb:.1f} GB free in /var/lib/rancher",
        f"free at least {MIN_DISK_GB:.0f} GB (models and volumes live there)",
    )
    add(
        "memory",
        facts.memory_gb >= MIN_MEMORY_GB,
        f"{facts.memory_gb:.1f} GB",
        f"K3s and the stack need at least {MIN_MEMORY_GB:.0f} GB",
    )
    busy = [
        f"{port} ({facts.listeners[port] or 'unknown process'})"
        for port in PORTS
        if port in facts.listeners and not (ours or "k3s" in facts.listeners[port])
        if role == "server" or port != 6443
    ]
    add(
        "ports",
        not busy,
        "80, 443, 6443 free" if not busy else "taken: " + ", ".join(busy),
        "stop what listens there (Traefik needs 80/443, the API 6443)",
    )
    add(
        "clock",
        abs(facts.clock_skew) <= MAX_CLOCK_SKEW,
        f"{facts.clock_skew:+.0f} s from this machine",
        "enable time sync on the host (timedatectl set-ntp true)",
    )
    return found


_EMBEDDED_IP = re.compile(r"(?:^|\.)(\d{1,3}(?:[.-]\d{1,3}){3})\.(?:sslip\.io|nip\.io)$")


def resolve(name: str) -> list[str]:
    """Addresses of `name`. sslip.io/nip.io names carry their address, so they are answered
    here without a DNS query (that is all those services do); others go to the system resolver."""
    match = _EMBEDDED_IP.search(name)
    if match:
        return [match.group(1).replace("-", ".")]
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)})
    except OSError:
        return []


def check_dns(
    names: list[str], address: str, *, strict: bool, resolver: Callable[[str], list[str]] = resolve
) -> list[Finding]:
    """Let's Encrypt's HTTP-01 challenge reaches the first server only if the names point there."""
    found = []
    try:
        ipaddress.ip_address(address)
        expected: set[str] = {address}
    except ValueError:
        expected = set(resolver(address))
    for name in names:
        got = resolver(name)
        ok = bool(set(got) & expected)
        found.append(
            Finding(
                "local",
                f"dns {name}",
                "ok" if ok else ("fail" if strict else "warn"),
                f"→ {', '.join(got) or 'no address'}" + ("" if ok else f" (first server: {address})"),
                "" if ok else f"point {name} at {address} (an A record), or use <ip>.sslip.io as DOMAIN",
            )
        )
    return found
