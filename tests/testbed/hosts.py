"""The `ssh_hosts` test bed: hosts that are network namespaces with their own IP, a private
copy-on-write root filesystem, hostname and a real sshd (see host-init.sh)."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .local import BedError, run, start
from .slot import Slot

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SUDO_USER = "deploy"


@dataclass(frozen=True)
class SshHost:
    name: str
    ip: str
    pid: int  # PID 1 of the host's PID namespace (sshd), as seen from here
    host_key_line: str  # "<ip> ssh-ed25519 AAAA..." for known_hosts
    sudo_user: str
    sudo_password: str
    netns: str
    launcher_pid: int
    port: int = 22

    def exec(self, command: str) -> str:
        """Run `command` (sh -c) inside the host, bypassing SSH: for checks of the host's state."""
        return run(["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "-p", "-r", "-w", "/bin/sh", "-c", command])


@dataclass(frozen=True)
class SshHosts:
    hosts: list[SshHost]
    client_key: Path  # private key accepted for root and the sudo user on every host
    known_hosts: Path  # entries for every host

    def __iter__(self):
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, index: int) -> SshHost:
        return self.hosts[index]


class HostFactory:
    """Makes hosts on a slot's bridge; `remove_all()` ends them (their mounts die with them)."""

    def __init__(self, slot: Slot):
        self.slot = slot
        self.dir = slot.path / "hosts"
        self.dir.mkdir(exist_ok=True)
        self.client_key = self.dir / "client_ed25519"
        if not self.client_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "k3stack-testbed", "-f", str(self.client_key)])
        self._live: list[SshHost] = []

    def create(self, count: int) -> SshHosts:
        pending = [self._launch() for _ in range(count)]  # launch all, then wait: hosts boot in parallel
        hosts = [self._await(*p) for p in pending]
        self._live.extend(hosts)
        known_hosts = self.dir / f"known_hosts-{self.slot.next_serial()}"
        known_hosts.write_text("".join(h.host_key_line + "\n" for h in hosts))
        return SshHosts(hosts, self.client_key, known_hosts)

    def _launch(self):
        name = f"host{self.slot.next_serial()}"
        ip = str(self.slot.allocate_ip())
        host_dir = self.dir / name
        (host_dir / "fs").mkdir(parents=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_dir / "ssh_host_ed25519_key")])
        netns = self.slot.add_netns(name, [ip])
        password = secrets.token_urlsafe(12)
        env = {
            **os.environ,
            "HOST_NAME": name,
            "HOST_IP": ip,
            # Seen inside the host at the same paths even where the host has its own tmpfs (a
            # checkout or venv under /tmp): the stand-in K3s runs this interpreter on this code.
            "HOST_SHARED_PATHS": ":".join(dict.fromkeys([str(REPO), sys.prefix])),
            "HOST_DIR": str(host_dir),
            "CLIENT_PUB": f"{self.client_key}.pub",
            "SUDO_USER_NAME": SUDO_USER,
            "SUDO_PASSWORD": password,
        }
        process = start(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "bash",
                str(HERE / "host-init.sh"),
            ],
            log_path=str(host_dir / "init.log"),
            env=env,
        )
        self.slot.record_process(process.pid)
        return name, ip, host_dir, password, netns, process.pid

    def _await(
        self, name: str, ip: str, host_dir: Path, password: str, netns: str, unshare_pid: int, timeout: float = 20
    ) -> SshHost:
        deadline = time.monotonic() + timeout
        pid1 = None
        while time.monotonic() < deadline:
            if pid1 is None:
                children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
                found = children.read_text().split() if children.exists() else []
                if found:
                    pid1 = int(found[0])
                    # sshd is PID 1 inside; it, not unshare, answers SIGTERM.
                    self.slot.record_process(pid1)
                elif not Path(f"/proc/{unshare_pid}").exists():
                    break
            try:
                with socket.create_connection((ip, 22), timeout=0.5) as conn:
                    if conn.recv(4).startswith(b"SSH-"):
                        key_type, key = (host_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
                        return SshHost(
                            name,
                            ip,
                            pid1 or unshare_pid,
                            f"{ip} {key_type} {key}",
                            SUDO_USER,
                            password,
                            netns,
                            unshare_pid,
                        )
            except OSError:
                time.sleep(0.05)
        log = (host_dir / "init.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise BedError(f"test host {name} ({ip}): sshd not up after {timeout:.0f}s; init log: {' | '.join(log)}")

    def remove_all(self) -> None:
        self.slot.terminate([h.pid for h in self._live] + [h.launcher_pid for h in self._live])
        for host in self._live:
            self.slot.remove_netns(host.netns)
        self._live.clear()
