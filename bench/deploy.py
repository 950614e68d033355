"""A no-op redeploy (everything applied and ready) with `inv deploy` versus what a kubectl user
runs for the same result: `kubectl apply --server-side -f <rendered dir>` (warm discovery cache)
and a rollout wait per workload. Wall time of the whole process and API requests, same API server,
same run. Prints figures; asserts nothing. Needs root (the test bed) and kubectl
(`apt-get install kubernetes-client`).

    python -m bench.deploy [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from k3stack import deploy as stack
from k3stack import manifests as mf
from k3stack import settings
from k3stack.console import Console
from k3stack.kube import Kube
from tests.testbed.cluster import KubeBed
from tests.testbed.slot import Slot

REPO = Path(__file__).resolve().parents[1]
BASE = "DOMAIN=203.0.113.10.sslip.io\nACME_EMAIL=ops@example.com\n"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout + done.stderr


def kubectl_round(
    kubectl: list[str], rendered: Path, workloads: list[tuple[str, str, str]], env: dict[str, str]
) -> tuple[float, int]:
    """One kubectl user's redeploy: apply, then wait for each workload. Returns (seconds, requests)."""
    started = time.perf_counter()
    requests = 0
    steps = [[*kubectl, "apply", "--server-side", "-f", str(rendered)]]
    for kind, namespace, name in workloads:
        if kind == "HelmChart":
            steps.append([*kubectl, "wait", "-n", namespace, "--for=condition=complete", f"job/helm-install-{name}"])
        else:
            steps.append([*kubectl, "rollout", "status", "-n", namespace, f"{kind.lower()}/{name}"])
    for argv in steps:
        done = subprocess.run([*argv, "-v=6"], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
        requests += len(re.findall(r"\b(GET|PATCH|POST|PUT|DELETE) https://\S+ \d{3}", done.stderr))
    return time.perf_counter() - started, requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("kubectl"):
        raise SystemExit("kubectl not found: apt-get install kubernetes-client")
    work = Path(tempfile.mkdtemp(prefix="k3stack-bench-"))
    slot = Slot.claim()
    try:
        bed = KubeBed.start(slot)
        env_dir = work / "env"
        env_dir.mkdir()
        (env_dir / "bench.env").write_text(BASE)
        (env_dir / "bench.env").chmod(0o600)
        env = {**os.environ, "K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": str(bed.kubeconfig), "CI": "true"}
        inv = [sys.executable, "-m", "invoke", "deploy", "--env", "bench"]
        timed(inv, env)  # first deploy: everything created and ready

        # The kubectl user's copy of the same stack, in its own namespaces (so the two field
        # managers never fight), rendered with its real secrets, applied once to be at rest.
        kube = Kube(str(bed.kubeconfig))
        theirs = settings.load(
            env_dir=Path("/nonexistent"),
            environ={
                "DOMAIN": "203.0.113.10.sslip.io",
                "ACME_EMAIL": "ops@example.com",
                "STACK_NAMESPACE": "kubectl-stack",
                "MONITORING_NAMESPACE": "kubectl-monitoring",
            },
        )
        plan = stack.make_plan(theirs, stack.read_secret_from(kube))
        rendered = work / "rendered"
        rendered.mkdir()
        (rendered / "stack.yaml").write_text(mf.to_yaml(plan.manifests))
        (rendered / "stack.yaml").chmod(0o600)
        kubectl = ["kubectl", f"--cache-dir={work / 'kube-cache'}"]
        workloads = [
            (m.kind, m.namespace or "", m.name)
            for m in plan.manifests
            if m.kind in ("Deployment", "StatefulSet", "DaemonSet", "HelmChart")
        ]
        subprocess.run(
            [*kubectl, "apply", "--server-side", "-f", str(rendered)], env=env, check=True, capture_output=True
        )
        stack.wait_for_rollouts(kube, plan, Console(stream=io.StringIO(), interactive=False), 120)
        kubectl_round(kubectl, rendered, workloads, env)  # warms kubectl's discovery cache

        ours, theirs_times, our_requests, their_requests = [], [], 0, 0
        for _ in range(args.runs):
            seconds, output = timed(inv, env)
            ours.append(seconds)
            our_requests = int(re.search(r"\((\d+) API requests\)", output).group(1))
            assert "no changes" in output, output
            seconds, their_requests = kubectl_round(kubectl, rendered, workloads, env)
            theirs_times.append(seconds)
        bed.stop()
    finally:
        slot.release()
        shutil.rmtree(work, ignore_errors=True)

    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs_times)
    objects = len(plan.manifests)
    print(
        f"no-op redeploy of the stack as shipped ({objects} objects, {len(workloads)} workloads), "
        f"median of {args.runs}, same API server:"
    )
    print(f"  {'':34}{'wall s':>8}{'requests':>10}")
    print(f"  {'inv deploy':34}{ours_median:>8.2f}{our_requests:>10}")
    print(f"  {'kubectl apply + rollout waits':34}{theirs_median:>8.2f}{their_requests:>10}")
    print(
        f"  ratio inv/kubectl: time {ours_median / theirs_median:.2f}x, requests "
        f"{our_requests / their_requests:.2f}x (target <= 1.0x); writes per object: 1 PATCH"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
