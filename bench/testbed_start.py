"""How long the test bed takes to come up: cold (build the Kubernetes binaries from Debian's
source) versus warm (binaries cached), and the SSH hosts. Prints figures; asserts nothing.

    python -m bench.testbed_start            # warm start; cold figure from the cached build's record
    python -m bench.testbed_start --cold     # also rebuild from scratch into a temporary cache (minutes)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.testbed import kube
from tests.testbed.cluster import KubeBed
from tests.testbed.hosts import HostFactory
from tests.testbed.slot import Slot


def warm_kube_start(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        slot = Slot.claim()
        try:
            started = time.perf_counter()
            bed = KubeBed.start(slot)
            times.append(time.perf_counter() - started)
            bed.stop()
        finally:
            slot.release()
    return times


def hosts_start(count: int, runs: int) -> list[float]:
    times = []
    slot = Slot.claim()
    try:
        for _ in range(runs):
            factory = HostFactory(slot)
            started = time.perf_counter()
            factory.create(count)
            times.append(time.perf_counter() - started)
            factory.remove_all()
    finally:
        slot.release()
    return times


def cold_build() -> float:
    cache = Path(tempfile.mkdtemp(prefix="k3stack-bench-cache-"))
    try:
        started = time.perf_counter()
        subprocess.run(
            ["bash", str(kube.HERE / "build-kube.sh")],
            check=True,
            env={**os.environ, "K3STACK_TESTBED_CACHE": str(cache)},
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="rebuild from an empty cache (3-6 minutes)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bin_dir = kube.cached_binaries() or kube.build_binaries()
    recorded = bin_dir / "build-seconds"
    Slot.sweep_stale()
    warm = warm_kube_start(args.runs)
    hosts3 = hosts_start(3, args.runs)
    cold = cold_build() if args.cold else (float(recorded.read_text()) if recorded.exists() else None)
    median = statistics.median(warm)
    rows = [
        (f"kube bed, warm start (median of {args.runs})", f"{median:.2f}"),
        ("  min / max", f"{min(warm):.2f} / {max(warm):.2f}"),
        (f"3 ssh hosts, start (median of {args.runs})", f"{statistics.median(hosts3):.2f}"),
    ]
    if cold is not None:
        rows.append(
            (f"kube binaries, cold build ({'measured now' if args.cold else 'recorded at build'})", f"{cold:.1f}")
        )
        rows.append(("cold (build + start) / warm start", f"{(cold + median) / median:.0f}x"))
    width = max(len(what) for what, _ in rows) + 2
    print(f"{'what':<{width}}seconds")
    for what, value in rows:
        print(f"{what:<{width}}{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
