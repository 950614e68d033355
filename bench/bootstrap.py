"""`inv bootstrap` fan-out on the test bed's sshd hosts with the stand-in K3s: one server alone
versus one server + two agents (joins included), and the no-op re-run of the three. Every host
is staged in parallel; only joins wait for the first server, so 1+2 should cost little more
than 1. Prints figures; asserts nothing. Needs root (network namespaces) and the bed's builds
(`inv setup`).

    python -m bench.bootstrap [--runs 3]

Targets (issue 16): 1+2 hosts ≤ 1.3× one host; no-op re-run of 3 hosts ≤ 2 s.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

from k3stack import bootstrap as boot
from k3stack import settings
from k3stack.console import Console
from tests.testbed import standin
from tests.testbed.hosts import HostFactory
from tests.testbed.slot import Slot


def run_once(hosts, servers, agents, work: Path) -> float:
    """Bootstrap `servers` + `agents` (fresh kubeconfig each time); seconds of wall time."""
    installer = work / "install.sh"
    installer.write_bytes(standin.installer_script())
    environ = {
        "DOMAIN": f"{servers[0].ip}.sslip.io",
        "ACME_EMAIL": "ops@example.com",
        "SSH_KEY": str(hosts.client_key),
        "SSH_KNOWN_HOSTS": str(hosts.known_hosts),
        "K3S_INSTALL_URL": installer.as_uri(),
        "K3S_INSTALL_SHA256": standin.installer_sha256(),
        "KUBECONFIG_PATH": str(work / "kubeconfig"),
        "SERVERS": ",".join(h.ip for h in servers),
        "AGENTS": ",".join(h.ip for h in agents),
    }
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=environ)
    started = time.perf_counter()
    boot.bootstrap(loaded, boot.Options(timeout=300), Console(stream=io.StringIO(), interactive=False))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh installs per shape (median printed)")
    runs = parser.parse_args().runs
    slot = Slot.claim()
    factory = HostFactory(slot)
    one, three, noop = [], [], []
    try:
        for _ in range(runs):
            for count, into in ((1, one), (3, three)):
                hosts = factory.create(count)
                for host in hosts:
                    standin.prepare_host(host)
                with tempfile.TemporaryDirectory(prefix="k3stack-bench-") as tmp:
                    servers, agents = [hosts[0]], [hosts[i] for i in range(1, count)]
                    into.append(run_once(hosts, servers, agents, Path(tmp)))
                    if count == 3:
                        noop.append(run_once(hosts, servers, agents, Path(tmp)))
                factory.remove_all()
    finally:
        factory.remove_all()
        slot.release()
    m1, m3, mn = statistics.median(one), statistics.median(three), statistics.median(noop)
    print(f"bootstrap, median of {runs} (stand-in K3s on sshd test hosts, 2 cores):")
    print(f"  1 server              {m1:6.2f} s")
    print(f"  1 server + 2 agents   {m3:6.2f} s   {m3 / m1:.2f}x one host (target <= 1.3x)")
    print(f"  no-op re-run, 3 hosts {mn:6.2f} s   (target <= 2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
