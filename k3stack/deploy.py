"""`inv deploy` and friends, as functions: plan (settings → Secrets + rendered manifests), apply,
prune, wait; status and destroy. Everything is validated and rendered before the first write."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import manifests as mf
from . import secrets as sec
from .apply import (
    KEPT_KINDS,
    PRUNABLE,
    Applier,
    ApplyError,
    Result,
    diff,
    instance_selector,
    split_by_instance,
    stamp_instance,
)
from .console import Console
from .kube import Kube
from .rollout import Status, Target, Waiter, targets
from .settings import Settings


@dataclass(frozen=True)
class Plan:
    settings: Settings
    manifests: list[mf.Manifest]  # Secrets included, instance-stamped, in apply order
    secrets: sec.StackSecrets

    @property
    def instance(self) -> str:
        return self.settings["STACK_NAMESPACE"]


def read_secret_from(kube: Kube) -> sec.ReadSecret:
    def read(namespace: str, name: str) -> dict[str, str] | None:
        obj = kube.get("v1", "Secret", name, namespace)
        return sec.decode(obj) if obj else None

    return read


def make_plan(settings: Settings, read_secret: sec.ReadSecret) -> Plan:
    """Resolve secrets and render every manifest; raises before anything is written."""
    stack_secrets = sec.resolve(settings, read_secret)
    variables = {**settings.render_vars(), **stack_secrets.checksums}
    rendered = mf.render(variables, gpu=settings.flag("GPU_ENABLED"))
    ordered = sorted([*rendered, *stack_secrets.objects], key=lambda m: m.phase)
    return Plan(settings, stamp_instance(ordered, settings["STACK_NAMESPACE"]), stack_secrets)


@dataclass
class DeployReport:
    results: list[Result] = field(default_factory=list)
    pruned: list[Result] = field(default_factory=list)
    rollouts: dict[Target, Status] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return any(r.action != "unchanged" for r in self.results) or bool(self.pruned)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in [*self.results, *self.pruned]:
            counts[r.action] = counts.get(r.action, 0) + 1
        return counts


def deploy(
    kube: Kube,
    plan: Plan,
    console: Console,
    *,
    force: bool = False,
    dry_run: bool = False,
    prune: bool = True,
    wait: bool = True,
    timeout: float = 600,
    show_namespace: bool = False,
    current: dict[tuple, dict] | None = None,
) -> DeployReport:
    """Apply, prune and wait for one stack; `current` (its live objects) when already listed."""
    started = time.monotonic()
    report = DeployReport()
    applier = Applier(kube, instance=plan.instance, force=force, dry_run=dry_run)
    if current is None:
        current = applier.current(plan.manifests)
    suffix = " (server dry run)" if dry_run else ""

    def show(result: Result) -> None:
        where = f"{result.namespace}/" if show_namespace and result.namespace else ""
        console.result(where + result.describe, result.action + suffix, result.detail)

    report.results = applier.apply(plan.manifests, current, on_result=show)
    if prune:
        report.pruned = applier.prune(plan.manifests, current, on_result=show)
    if wait and not dry_run:
        report.rollouts = wait_for_rollouts(kube, plan, console, timeout)
    report.seconds = time.monotonic() - started
    return report


def deploy_many(
    kube: Kube, plans: list[Plan], console: Console, *, wait: bool = True, timeout: float = 600, **options
) -> DeployReport:
    """Several stacks (one settings file each, e.g. staging and prod namespaces) in one run:
    applied side by side, then one wait for all their rollouts."""
    if len(plans) == 1:
        return deploy(kube, plans[0], console, wait=wait, timeout=timeout, **options)
    started = time.monotonic()
    instances = [p.instance for p in plans]
    if len(set(instances)) != len(instances):
        raise ApplyError("two settings files name the same STACK_NAMESPACE; give each stack its own", [])
    # One LIST per kind for all stacks, not one per stack.
    everything = Applier(kube, instance=instances[0]).current([m for p in plans for m in p.manifests], instances)
    current = split_by_instance(everything)

    def one(plan: Plan) -> DeployReport:
        return deploy(
            kube, plan, console, wait=False, show_namespace=True, current=current.get(plan.instance, {}), **options
        )

    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        reports = list(pool.map(one, plans))
    merged = DeployReport(
        results=[r for report in reports for r in report.results],
        pruned=[r for report in reports for r in report.pruned],
    )
    if wait and not options.get("dry_run"):
        merged.rollouts = wait_for_rollouts(kube, [m for p in plans for m in p.manifests], console, timeout)
    merged.seconds = time.monotonic() - started
    return merged


def wait_for_rollouts(
    kube: Kube, plan: Plan | list[mf.Manifest], console: Console, timeout: float
) -> dict[Target, Status]:
    items = targets(plan.manifests if isinstance(plan, Plan) else plan)
    reported: dict[Target, str] = {}
    with console.progress("waiting for rollouts", total=len(items)) as bar:

        def progress(statuses: dict[Target, Status]) -> None:
            if bar is not None:
                bar.update(bar.task_ids[0], completed=sum(s.done for s in statuses.values()))
            for target, status in statuses.items():
                if reported.get(target) != status.message:
                    reported[target] = status.message
                    if status.done or bar is None:
                        console.line(
                            f"{target.describe()} ({target.namespace}): {status.message}",
                            style="green" if status.done else None,
                        )

        return Waiter(kube).wait(items, timeout, on_progress=progress)


def show_diff(kube: Kube, plan: Plan, console: Console) -> int:
    """Print what a deploy would change (server dry run); returns the number of changed objects."""
    applier = Applier(kube, instance=plan.instance, dry_run=True)
    current = applier.current(plan.manifests)
    changed = 0
    for result in applier.apply(plan.manifests, current):
        if result.action == "unchanged":
            continue
        changed += 1
        # A non-failed result always carries the object (the dry run's answer, or the manifest).
        before = current.get(mf.object_key(result.obj))
        console.line(diff(before, result.obj, f"{result.namespace}/{result.describe}"))
    wanted = {m.key for m in plan.manifests}
    for key, obj in sorted(current.items()):
        if key not in wanted and obj["kind"] not in KEPT_KINDS:
            changed += 1
            console.line(f"--- would prune {obj['kind'].lower()}/{obj['metadata']['name']} ({key[2]})")
    return changed


def destroy(
    kube: Kube, plan: Plan, console: Console, *, purge: bool = False, on_result: Callable[[Result], None] | None = None
) -> list[Result]:
    """Delete the stack's objects, newest phase first. PVCs, Secrets and Namespaces stay unless purge."""
    results = []
    selector = instance_selector(plan.instance)
    kinds = {(m.obj["apiVersion"], m.kind) for m in plan.manifests} | set(PRUNABLE)
    order = sorted(kinds, key=lambda k: -mf.PHASES.get(k[1], mf.LAST_PHASE))
    for api_version, kind in order:
        if kind in KEPT_KINDS and not purge:
            continue
        if kind == "Namespace":
            continue  # namespaces last, below
        for obj in kube.list(api_version, kind, label_selector=selector):
            meta = obj["metadata"]
            kube.delete(api_version, kind, meta["name"], meta.get("namespace"))
            result = Result(mf.describe(api_version, kind, meta["name"]), meta.get("namespace", ""), "deleted")
            console.result(result.describe, "deleted", f"({result.namespace})")
            results.append(result)
    if purge:
        for m in plan.manifests:
            if m.kind == "Namespace" and kube.delete("v1", "Namespace", m.name):
                console.result(m.describe(), "deleted")
                results.append(Result(m.describe(), "", "deleted"))
    return results


def status_rows(kube: Kube, plan: Plan) -> list[list[str]]:
    """One row per workload: ready/desired, image tag, volumes (bound + size), URL."""
    waiter = Waiter(kube)
    claims = {
        (c["metadata"]["namespace"], c["metadata"]["name"]): c
        for ns in {m.namespace for m in plan.manifests if m.namespace}
        for c in kube.list("v1", "PersistentVolumeClaim", ns)
    }
    urls = {
        "open-webui": f"https://{plan.settings['CHAT_HOST']}",
        "netdata": f"https://{plan.settings['MONITOR_HOST']}",
    }
    rows = []
    for target in targets(plan.manifests):
        status = waiter.status(target)
        manifest = next(m for m in plan.manifests if m.kind == target.kind and m.name == target.name)
        pod = manifest.obj.get("spec", {}).get("template", {}).get("spec", {})
        images = ", ".join(c["image"].rsplit(":", 1)[-1] for c in pod.get("containers", []))
        if target.kind == "HelmChart":
            images = f"chart {manifest.obj['spec'].get('version', '')}"
        volumes = []
        for volume in pod.get("volumes", []):
            claim_name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim_name:
                claim = claims.get((target.namespace, claim_name))
                phase = (claim or {}).get("status", {}).get("phase", "missing")
                size = ((claim or {}).get("status", {}).get("capacity") or {}).get("storage", "")
                volumes.append(f"{claim_name} {phase} {size}".strip())
        state = "ready" if status.done else ("FAILED" if status.failed else "not ready")
        rows.append(
            [
                target.namespace,
                target.describe(),
                f"{status.ready}/{status.desired}",
                state,
                images,
                "; ".join(volumes) or "-",
                urls.get(target.name, "-"),
            ]
        )
    return rows
