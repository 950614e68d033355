"""One test bed's claim on this machine: a state directory, a bridge, a /24 and a name prefix.

Every resource the bed creates (process, network namespace, link) is written to the slot's
ledger *before* it is created, so a bed killed mid-run is cleaned up by the next bed that
starts: a slot whose owner process is gone is swept before it is reused. Parallel pytest
workers each take their own slot, so they never share bridges, subnets or namespace names.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .local import BedError, run

ROOT = Path(tempfile.gettempdir())
PREFIX = "k3stack-testbed-"
MAX_SLOTS = 64


def _start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/pid/stat): guards against PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str) -> bool:
    return _start_time(pid) == started


class Slot:
    """A claimed slot. Use `Slot.claim()`; call `release()` to tear everything down."""

    def __init__(self, index: int, path: Path):
        self.index = index
        self.path = path
        self.name = f"k3stb{index}"
        self.network = ipaddress.ip_network(f"10.231.{index}.0/24")
        self.gateway = self.network.network_address + 1
        self._next_ip = 2
        self._ledger = path / "ledger"
        self._bridge_up = False
        self._serial = 0

    def next_serial(self) -> int:
        """A number unique within this slot, for names of hosts and files."""
        self._serial += 1
        return self._serial

    # -- claiming -------------------------------------------------------------------------
    @classmethod
    def claim(cls) -> Slot:
        lock_path = ROOT / f"{PREFIX}lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for index in range(1, MAX_SLOTS + 1):
                path = ROOT / f"{PREFIX}{index}"
                if path.exists():
                    if cls._owner_alive(path):
                        continue
                    cls(index, path)._sweep()
                elif Path(f"/sys/class/net/k3stb{index}").exists():
                    # A bridge with no slot here: a bed with another /tmp (a container, a chroot)
                    # holds this index. Links are machine-wide, so leave it to its owner.
                    continue
                path.mkdir(mode=0o700)
                (path / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
                return cls(index, path)
        raise BedError(f"all {MAX_SLOTS} test-bed slots under {ROOT} are in use by live processes")

    @staticmethod
    def _owner_alive(path: Path) -> bool:
        try:
            pid, started = (path / "owner").read_text().split()
        except (OSError, ValueError):
            return False
        return _alive(int(pid), started)

    @classmethod
    def sweep_stale(cls) -> None:
        """Clean every slot whose owner is gone (a bed killed by SIGKILL or a crash). Under the
        claim lock: a slot being claimed has its directory before its owner file."""
        with open(ROOT / f"{PREFIX}lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for path in ROOT.glob(f"{PREFIX}[0-9]*"):
                if path.is_dir() and not cls._owner_alive(path):
                    cls(int(path.name.removeprefix(PREFIX)), path)._sweep()

    # -- ledger ---------------------------------------------------------------------------
    def _record(self, kind: str, value: str) -> None:
        with open(self._ledger, "a") as ledger:
            ledger.write(f"{kind} {value}\n")

    def record_process(self, pid: int) -> None:
        self._record("pid", f"{pid} {_start_time(pid)}")

    def _entries(self) -> list[tuple[str, str]]:
        try:
            lines = self._ledger.read_text().splitlines()
        except OSError:
            return []
        return [tuple(line.split(" ", 1)) for line in lines if " " in line]  # type: ignore[misc]

    # -- network --------------------------------------------------------------------------
    def allocate_ip(self) -> ipaddress.IPv4Address:
        if self._next_ip > 254:
            raise BedError(f"slot {self.index}: no free address left in {self.network}")
        ip = self.network.network_address + self._next_ip
        self._next_ip += 1
        return ip

    def ensure_bridge(self) -> None:
        if self._bridge_up:
            return
        if Path(f"/sys/class/net/{self.name}").exists():
            # never record (and so never sweep) a link this slot did not create
            raise BedError(
                f"bridge {self.name} already exists and is not this bed's: another bed holds slot {self.index}"
            )
        self._record("link", self.name)
        run(["ip", "link", "add", self.name, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.name])
        run(["ip", "link", "set", self.name, "up"])
        self._bridge_up = True

    def add_netns(self, label: str, addresses: list[ipaddress.IPv4Address]) -> str:
        """A network namespace on the bridge holding `addresses`; no default route, so
        nothing from inside can leave the machine."""
        self.ensure_bridge()
        netns = f"{self.name}-{label}"
        host_end, ns_end = f"{self.name}{label[:4]}h{len(self._entries())}", "eth0"
        host_end = host_end[:15]
        self._record("netns", netns)
        run(["ip", "netns", "add", netns])
        self._record("link", host_end)
        run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "tmp" + host_end[3:]])
        run(["ip", "link", "set", "tmp" + host_end[3:], "netns", netns])
        run(["ip", "-n", netns, "link", "set", "tmp" + host_end[3:], "name", ns_end])
        run(["ip", "link", "set", host_end, "master", self.name, "up"])
        for ip in addresses:
            run(["ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", ns_end])
        run(["ip", "-n", netns, "link", "set", ns_end, "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        return netns

    # -- teardown -------------------------------------------------------------------------
    def release(self) -> None:
        self._sweep()

    def terminate(self, pids: list[int] | None = None, grace: float = 5) -> None:
        """SIGTERM the recorded processes (all, or those in `pids`), SIGKILL what outlives `grace`."""
        recorded = [(int(v.split()[0]), v.split()[1]) for k, v in self._entries() if k == "pid"]
        targets = [(pid, started) for pid, started in recorded if pids is None or pid in pids]
        for pid, started in targets:
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pid, started in targets:
            while _alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove_netns(self, netns: str) -> None:
        with contextlib.suppress(BedError):
            run(["ip", "netns", "del", netns])

    def _sweep(self) -> None:
        self.terminate()
        entries = self._entries()
        # Namespaces the ledger may have missed (a crash between record and create is fine,
        # the reverse cannot happen) are matched by the slot's prefix.
        netns_names = {v for k, v in entries if k == "netns"}
        with contextlib.suppress(BedError):
            netns_names |= {
                line.split()[0]
                for line in run(["ip", "netns", "list"]).splitlines()
                if line.startswith(f"{self.name}-")
            }
        for netns in netns_names:
            self.remove_netns(netns)
        for link in reversed([v for k, v in entries if k == "link"]):
            if Path(f"/sys/class/net/{link}").exists():
                with contextlib.suppress(BedError):
                    run(["ip", "link", "del", link])
        shutil.rmtree(self.path, ignore_errors=True)
