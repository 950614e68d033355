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
# Small requests so 22 copies of the stack fit the simulated node (8 CPUs, 32 GiB); the objects
# are otherwise the stack as shipped.
SMALL = {
    "OLLAMA_CPU_REQUEST": "50m",
    "OLLAMA_MEMORY_REQUEST": "256Mi",
    "OPEN_WEBUI_CPU_REQUEST": "50m",
    "OPEN_WEBUI_MEMORY_REQUEST": "256Mi",
    "POSTGRES_CPU_REQUEST": "50m",
}
BASE = "DOMAIN=203.0.113.10.sslip.io\nACME_EMAIL=ops@example.com\n" + "".join(f"{k}={v}\n" for k, v in SMALL.items())


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


def measure(bed: KubeBed, work: Path, copies: int, runs: int) -> dict:
    """`copies` stacks (own namespaces each) redeployed with no change: one `inv deploy` with an
    --env per stack, versus one `kubectl apply` of all of them plus a wait per workload."""
    env_dir = work / f"env-{copies}"
    env_dir.mkdir()
    names = []
    for i in range(copies):
        name = f"bench{i}"
        (env_dir / f"{name}.env").write_text(
            BASE + f"STACK_NAMESPACE=ours-{copies}-{i}\nMONITORING_NAMESPACE=ours-mon-{copies}-{i}\n"
        )
        (env_dir / f"{name}.env").chmod(0o600)
        names.append(name)
    env = {**os.environ, "K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": str(bed.kubeconfig), "CI": "true"}
    inv = [sys.executable, "-m", "invoke", "deploy", "--no-pull", *[a for n in names for a in ("--env", n)]]
    timed(inv, env)  # first deploy: everything created and ready

    # The kubectl user's copy of the same stacks, in their own namespaces (so the two field
    # managers never fight), rendered with their real secrets, applied once to be at rest.
    kube = Kube(str(bed.kubeconfig))
    plans = []
    for i in range(copies):
        theirs = settings.load(
            env_dir=Path("/nonexistent"),
            environ={
                "DOMAIN": "203.0.113.10.sslip.io",
                "ACME_EMAIL": "ops@example.com",
                "STACK_NAMESPACE": f"kubectl-{copies}-{i}",
                "MONITORING_NAMESPACE": f"kubectl-mon-{copies}-{i}",
                **SMALL,
            },
        )
        plans.append(stack.make_plan(theirs, stack.read_secret_from(kube)))
    manifests = [m for plan in plans for m in plan.manifests]
    rendered = work / f"rendered-{copies}"
    rendered.mkdir()
    (rendered / "stack.yaml").write_text(mf.to_yaml(manifests))
    (rendered / "stack.yaml").chmod(0o600)
    kubectl = ["kubectl", f"--cache-dir={work / 'kube-cache'}"]
    workloads = [
        (m.kind, m.namespace or "", m.name)
        for m in manifests
        if m.kind in ("Deployment", "StatefulSet", "DaemonSet", "HelmChart")
    ]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(rendered)], env=env, check=True, capture_output=True)
    stack.wait_for_rollouts(kube, manifests, Console(stream=io.StringIO(), interactive=False), 300)
    kubectl_round(kubectl, rendered, workloads, env)  # warms kubectl's discovery cache

    ours, theirs_times, our_requests, their_requests = [], [], 0, 0
    for _ in range(runs):
        seconds, output = timed(inv, env)
        ours.append(seconds)
        our_requests = int(re.search(r"\((\d+) API requests\)", output).group(1))
        assert "no changes" in output, output
        writes = len(re.findall(r" (created|configured)\b", output))
        assert writes == 0, output
        seconds, their_requests = kubectl_round(kubectl, rendered, workloads, env)
        theirs_times.append(seconds)
    return {
        "objects": len(manifests),
        "workloads": len(workloads),
        "ours": statistics.median(ours),
        "our_requests": our_requests,
        "theirs": statistics.median(theirs_times),
        "their_requests": their_requests,
    }


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
        sizes = [("the stack as shipped", 1, 1.0), ("the stack in 10 namespaces", 10, 0.5)]
        figures = [(label, target, measure(bed, work, copies, args.runs)) for label, copies, target in sizes]
        bed.stop()
    finally:
        slot.release()
        shutil.rmtree(work, ignore_errors=True)

    print(f"no-op redeploy (everything applied and ready), median of {args.runs}, same API server:")
    print(f"  {'':62}{'wall s':>8}{'requests':>10}")
    for label, target, f in figures:
        print(f"  {label} ({f['objects']} objects, {f['workloads']} workloads)")
        print(f"    {'inv deploy':58}{f['ours']:>8.2f}{f['our_requests']:>10}")
        print(
            f"    {'kubectl apply --server-side + a rollout wait per workload':58}"
            f"{f['theirs']:>8.2f}{f['their_requests']:>10}"
        )
        print(
            f"    ratio inv/kubectl: time {f['ours'] / f['theirs']:.2f}x (target <= {target}x), "
            f"requests {f['our_requests'] / f['their_requests']:.2f}x; writes: 0 (kubectl: 1 PATCH per object)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
