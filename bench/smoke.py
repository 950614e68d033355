"""`inv smoke` and model pulls against the test bed's real stack (tests/testbed/real/), with latency
injected into the Ollama double: is the smoke run as slow as its slowest check (checks run at
once) rather than the sum of them, and are two model pulls as slow as the slower one? One run,
same test bed. Prints figures; asserts nothing. Needs root (the test bed) and the real components
(bash tests/testbed/install-components.sh).

    python -m bench.smoke [--latency 0.8] [--pull-seconds 2]
"""

from __future__ import annotations

import argparse
import io
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from k3stack import ollama as ol
from k3stack import smoke as sm
from k3stack.console import Console
from tests.testbed.cluster import KubeBed
from tests.testbed.fake_ollama import layers_for
from tests.testbed.real.stack import RealStack
from tests.testbed.slot import Slot

MODELS = ["llama3.1:8b", "mistral:7b"]
MB = 1_000_000


def inject_latency(fake: RealStack, slowest: float) -> None:
    """The Ollama checks wait on the double (the real components answer at their own pace)."""
    fake.ollama.latency = {"/api/version": 0.6 * slowest, "/api/tags": 0.8 * slowest}


def bench_smoke(fake: RealStack) -> None:
    report = sm.smoke(fake.kube, fake.smoke_config())
    if not report.ok:
        raise SystemExit(f"smoke failed on the bench: {[(r.name, r.reason) for r in report.failed]}")
    times = [r.seconds for r in report.results]
    print(f"inv smoke, {len(times)} checks (latency injected per check):")
    for r in sorted(report.results, key=lambda r: -r.seconds):
        print(f"  {r.seconds:6.2f}s  {r.name}")
    print(f"  wall {report.seconds:.2f}s   sum of checks {sum(times):.2f}s   slowest check {max(times):.2f}s")
    print(f"  wall / slowest = {report.seconds / max(times):.2f}x (target <= 1.2x)")


def bench_pulls(fake: RealStack, seconds: float) -> None:
    ollama = fake.ollama
    sizes = {"llama3.1:8b": [60 * MB, 20 * MB, 1000], "mistral:7b": [50 * MB, 500]}
    ollama.library = {ol.normalise(name): layers_for(name, layers) for name, layers in sizes.items()}
    ollama.rate = 80 * MB / seconds
    ollama.step = 2 * MB
    client = ol.Ollama(fake.kube, fake.namespace)
    alone = {}
    for name in MODELS:
        ollama.reset()
        started = time.monotonic()
        result = client.pull(name)
        alone[name] = time.monotonic() - started
        if not result.ok:
            raise SystemExit(f"pull of {name} failed on the bench: {result.error}")
    ollama.reset()
    report = ol.pull_models(client, MODELS, Console(stream=io.StringIO(), interactive=False))
    if not report.ok:
        raise SystemExit(f"pulls failed on the bench: {[r.error for r in report.results]}")
    slower = max(alone.values())
    print("pulling 2 models through the service proxy:")
    for name in MODELS:
        print(f"  alone {alone[name]:.2f}s  {name} ({ol.human_size(ollama.size(name))})")
    print(f"  both at once {report.seconds:.2f}s   one after the other {sum(alone.values()):.2f}s")
    print(f"  both / slower alone = {report.seconds / slower:.2f}x (target <= 1.2x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.8, help="seconds of the slowest injected check")
    parser.add_argument("--pull-seconds", type=float, default=2.0, help="seconds the larger model takes alone")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="k3stack-bench-"))
    slot = Slot.claim()
    try:
        bed = KubeBed.start(slot)
        # The stand-in stack's own logins, generated per run; the embedding model is one of the two
        # (deploy pulls it too, so smoke expects it among the models).
        logins = {name: secrets.token_urlsafe(18) for name in ("WEBUI_ADMIN_PASSWORD", "NETDATA_PASSWORD")}
        fake = RealStack.create(bed, models=MODELS, OLLAMA_EMBEDDING_MODEL=MODELS[1], **logins)
        fake.deploy()
        inject_latency(fake, args.latency)
        bench_smoke(fake)
        bench_pulls(fake, args.pull_seconds)
        fake.close()
        bed.stop()
    finally:
        slot.release()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
