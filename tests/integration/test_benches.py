"""The benchmarks' own code on the bed, so a change cannot leave them broken unnoticed (two did:
bench.deploy after the CronJob came, bench.smoke after the embedding model was pulled). The
benches print times and assert nothing; these tests assert only what does not depend on the
machine: they run to the end, and the request counts they report."""

from __future__ import annotations

import shutil

import pytest

from bench import deploy as bench_deploy

pytestmark = pytest.mark.timeout(600)


def test_bench_deploy_measures_both_pairs_and_the_noop_stays_in_the_request_budget(kube, tmp_path, capsys):
    if not shutil.which("kubectl"):
        pytest.fail("kubectl not found: `inv setup` installs it (Debian's kubernetes-client)")
    try:
        figures = bench_deploy.measure(str(kube.kubeconfig), None, tmp_path, 1, 1)
    finally:
        bench_deploy.cleanup(str(kube.kubeconfig), None)  # the shared bed's node keeps room for other tests' pods
    bench_deploy.show(1, figures)
    printed = capsys.readouterr().out
    assert "ratio inv/kubectl without waits:" in printed
    assert figures["objects"] >= 30
    assert figures["workloads"] == 5  # four Deployments and Netdata's HelmChart
    # Issue 16's request budget for a no-op redeploy without waits, one request per object (its
    # server-side apply) plus one per kind (the LIST prune reads), and on top: discovery (3), the
    # Lease (take + let go: 2), the stack's Secrets read (1 LIST) and the pending-rotation check (1).
    budget = figures["objects"] + figures["kinds"] + 3 + 2 + 1 + 1
    assert figures["ours_requests"] <= budget, figures
    assert figures["ours_wait_requests"] - figures["ours_requests"] <= 1, figures
    assert min(figures[k] for k in ("ours", "ours_wait", "theirs", "theirs_wait")) > 0
