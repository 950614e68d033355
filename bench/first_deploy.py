"""A first deploy on the test bed with the stack's real components (real Open WebUI, PostgreSQL,
Redis, Netdata; the Ollama double pulling at a set rate): time from the start of the deploy to
every workload ready, to every model pulled, and to smoke-green, broken down per phase (apply,
each rollout, the pulls), two ways in one run, each a first deploy in fresh namespaces:

- `pulls overlapped`: what `inv deploy` does (pipeline.deploy_stacks): a stack's pulls start as
  soon as its Ollama Deployment is Ready, while the other workloads roll out;
- `pulls after`: as before issue 16, the rollouts first (`--no-pull`), then the pulls
  (ollama.pull_models).

Prints figures; asserts nothing. Needs root (the test bed) and the real components (bash
tests/testbed/install-components.sh). About 1–2 minutes per deploy (Open WebUI's cold start).

    python -m bench.first_deploy [--pull-seconds 20] [--runs 1]
"""

from __future__ import annotations

import argparse
import io
import re
import secrets
import statistics
import sys
import threading
import time

from k3stack import ollama as ol
from k3stack import pipeline
from k3stack import smoke as sm
from k3stack.console import Console
from tests.testbed.cluster import KubeBed
from tests.testbed.fake_ollama import layers_for
from tests.testbed.real import missing
from tests.testbed.real.components import webui_api
from tests.testbed.real.stack import RealStack
from tests.testbed.slot import Slot

MB = 1_000_000
# Layer sizes (bytes) of the models the deploy pulls; the double's rate (per stream) makes the largest
# last --pull-seconds.
MODELS = {"llama3.1:8b": [60 * MB, 20 * MB, 1000], "mistral:7b": [50 * MB, 500], "nomic-embed-text:v1.5": [10 * MB]}
ROLLED_OUT = re.compile(r"^(\S+) \((\S+)\): (successfully rolled out|chart installed.*)$")
ROLLOUT_LINE = re.compile(r"^\S+\.\S+/\S+ \(\S+\): ")
SERVING, READY_WEBUI = "open-webui serving /health", "ready deployment.apps/open-webui"
MODEL_LINE = re.compile(r"^model (\S+) (created|unchanged|failed)")


class Clock(io.TextIOBase):
    """The console's stream: every line it writes, with the seconds since `started`."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._partial = ""

    def write(self, text: str) -> int:
        now = time.monotonic() - self.started
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        self.lines.extend((now, line) for line in complete)
        return len(text)

    def isatty(self) -> bool:
        return False

    def first(self, pattern: re.Pattern[str]) -> float | None:
        return next((t for t, line in self.lines if pattern.search(line)), None)


def watch_webui(real: RealStack, started: float, into: dict[str, float], stop: threading.Event) -> None:
    """Until `stop`: when the Open WebUI process started and when it first answered /health 200, in
    seconds from `started` (the app's own start time, which the pod's probes can only add to)."""
    webui = real.webui()
    while not stop.wait(0.1):
        if "process" not in into and webui.process.popen is not None:
            into["process"] = time.monotonic() - started
        if "process" in into:
            try:
                status, _ = webui_api(webui.ip, "GET", "/health")
            except (OSError, ValueError):
                continue
            if status == 200:
                into["serving"] = time.monotonic() - started
                return


def first_deploy(bed: KubeBed, overlapped: bool, pull_seconds: float) -> dict[str, float]:
    """One first deploy of the real stack in fresh namespaces; the phases' end times in seconds
    from its start (apply, each rollout, pulls start/end, all ready, models pulled, smoke-green)."""
    # The stand-in stack's own logins: generated per run, never a literal in the repo.
    logins = {name: secrets.token_urlsafe(18) for name in ("WEBUI_ADMIN_PASSWORD", "NETDATA_PASSWORD")}
    real = RealStack.create(bed, models=list(MODELS), **logins)
    try:
        real.ollama.reset()  # nothing on Ollama's volume: a first deploy pulls every model
        real.ollama.library = {ol.normalise(name): layers_for(name, sizes) for name, sizes in MODELS.items()}
        real.ollama.rate = max(sum(sizes) for sizes in MODELS.values()) / pull_seconds  # per stream
        kube = real.kube
        clock = Clock()
        console = Console(stream=clock, interactive=False)
        real._route()  # the pods' probes run against the real processes, as deploy_plan does
        real.start_kubelet()
        clock.started = started = time.monotonic()
        app: dict[str, float] = {}  # Open WebUI's own start: its process began, it first served /health
        watching = threading.Event()
        watcher = threading.Thread(target=watch_webui, args=(real, started, app, watching), daemon=True)
        watcher.start()
        stacks = pipeline.plan_all([real.settings()], kube, console)
        outcome = pipeline.deploy_stacks(kube, stacks, console, timeout=600, pull=overlapped)
        if not overlapped:
            for stack in stacks:
                report = ol.pull_models(ol.Ollama.from_settings(kube, stack.settings), stack.settings.models, console)
                outcome.pulled.append(report)
        done = time.monotonic() - started
        watching.set()
        watcher.join(5)
        if outcome.failed_models or len(outcome.pulled[0].results) != len(MODELS):
            raise SystemExit(f"the pulls failed on the bench: {[r.error for r in outcome.failed_models]}")
        real.plan = stacks[0].plan
        real.sync()
        checked = sm.smoke(kube, real.smoke_config(deadline=60))
        if not checked.ok:
            raise SystemExit(f"smoke failed on the bench: {[(r.name, r.reason) for r in checked.failed]}")
        phases = {"apply": clock.first(ROLLOUT_LINE) or 0.0}
        for at, line in clock.lines:
            if found := ROLLED_OUT.match(line):
                phases.setdefault(f"ready {found.group(1)}", at)
        rollouts = [t for name, t in phases.items() if name.startswith("ready ")]
        models = [t for t, line in clock.lines if MODEL_LINE.match(line)]
        phases["open-webui process started"] = app.get("process", float("nan"))
        phases[SERVING] = app.get("serving", float("nan"))
        phases["pulls start"] = clock.first(re.compile(r"^==> pulling \d+ model")) or done
        phases["all ready"] = max(rollouts)
        phases["models pulled"] = max(models)
        phases["deploy done"] = done  # all ready and every model pulled: a working stack
        phases["smoke-green"] = time.monotonic() - started
        phases["smoke alone"] = checked.seconds
        return phases
    finally:
        real.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pull-seconds", type=float, default=20.0, help="seconds the models' download takes")
    parser.add_argument("--runs", type=int, default=1, help="first deploys of each way (medians printed)")
    args = parser.parse_args()
    if reason := missing():
        raise SystemExit(reason)
    slot = Slot.claim()
    results: dict[str, list[dict[str, float]]] = {"pulls overlapped": [], "pulls after": []}
    try:
        bed = KubeBed.start(slot)
        try:
            for _ in range(args.runs):  # the way of today first: a warmer page cache favours the other
                for label in results:
                    results[label].append(first_deploy(bed, label == "pulls overlapped", args.pull_seconds))
        finally:
            bed.stop()
    finally:
        slot.release()
    names = list(dict.fromkeys(name for runs in results.values() for run in runs for name in run))
    print(
        f"first deploy on the test bed, real Open WebUI/PostgreSQL/Redis/Netdata, {len(MODELS)} models "
        f"(~{args.pull_seconds:.0f}s of download), median of {args.runs}; seconds from the deploy's start:"
    )
    print(f"  {'':40}" + "".join(f"{label:>18}" for label in results))
    for name in names:
        cells = [statistics.median(run[name] for run in runs) for runs in results.values()]
        print(f"  {name:40}" + "".join(f"{cell:>18.1f}" for cell in cells))
    for label, runs in results.items():
        gap = statistics.median(run[READY_WEBUI] - run[SERVING] for run in runs)
        own = statistics.median(run[SERVING] - run["open-webui process started"] for run in runs)
        print(f"  {label}: Open WebUI's own start {own:.1f}s; Ready {gap:.1f}s after it served (target <= 5s)")
    for name in ("models pulled", "deploy done", "smoke-green"):
        now, before = (statistics.median(run[name] for run in runs) for runs in results.values())
        print(f"  to {name}: {now:.1f}s overlapped vs {before:.1f}s after = {now / before:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
