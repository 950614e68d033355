"""Wait for workloads like `kubectl rollout status`, all at once, with progress; when one does
not become ready in time, say why: its conditions, recent events and the last log lines of
its failing pods."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import K3stackError
from .kube import Kube
from .manifests import Manifest, describe

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "HelmChart")


@dataclass(frozen=True)
class Target:
    api_version: str
    kind: str
    namespace: str
    name: str

    def describe(self) -> str:
        return describe(self.api_version, self.kind, self.name)


@dataclass(frozen=True)
class Status:
    done: bool
    message: str  # kubectl's words: "2 of 3 updated replicas are available..."
    failed: bool = False
    ready: int = 0
    desired: int = 0
    missing: bool = False  # the object does not exist
    terminating: bool = False  # it is being deleted (a HelmChart while its helm-delete Job runs)


class RolloutError(K3stackError):
    def __init__(self, report: str, statuses: dict[Target, Status]):
        self.statuses = statuses
        super().__init__(report)


def targets(manifests: Iterable[Manifest]) -> list[Target]:
    return [
        Target(m.obj["apiVersion"], m.kind, m.namespace or "", m.name) for m in manifests if m.kind in WORKLOAD_KINDS
    ]


def _condition(obj: dict, kind: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def deployment_status(obj: dict) -> Status:
    spec, status, meta = obj.get("spec", {}), obj.get("status") or {}, obj["metadata"]
    want = spec.get("replicas", 1)
    updated, total, available = (status.get(k, 0) for k in ("updatedReplicas", "replicas", "availableReplicas"))
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return Status(False, "waiting for deployment spec update to be observed", ready=available, desired=want)
    progressing = _condition(obj, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Status(
            False,
            f"deployment {meta['name']!r} exceeded its progress deadline",
            failed=True,
            ready=available,
            desired=want,
        )
    if updated < want:
        return Status(False, f"{updated} out of {want} new replicas have been updated", ready=available, desired=want)
    if total > updated:
        return Status(False, f"{total - updated} old replicas are pending termination", ready=available, desired=want)
    if available < updated:
        return Status(False, f"{available} of {updated} updated replicas are available", ready=available, desired=want)
    return Status(True, "successfully rolled out", ready=available, desired=want)


def statefulset_status(obj: dict) -> Status:
    spec, status, meta = obj.get("spec", {}), obj.get("status") or {}, obj["metadata"]
    want = spec.get("replicas", 1)
    ready, updated = status.get("readyReplicas", 0), status.get("updatedReplicas", 0)
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return Status(False, "waiting for statefulset spec update to be observed", ready=ready, desired=want)
    if ready < want:
        return Status(False, f"{ready} of {want} pods are ready", ready=ready, desired=want)
    if status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
        return Status(False, f"{updated} of {want} pods updated to the new revision", ready=ready, desired=want)
    return Status(
        True, f"{ready} pods ready at revision {status.get('currentRevision', '?')}", ready=ready, desired=want
    )


def daemonset_status(obj: dict) -> Status:
    status, meta = obj.get("status") or {}, obj["metadata"]
    want = status.get("desiredNumberScheduled", 0)
    updated, available = status.get("updatedNumberScheduled", 0), status.get("numberAvailable", 0)
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return Status(False, "waiting for daemon set spec update to be observed", ready=available, desired=want)
    if updated < want:
        return Status(False, f"{updated} out of {want} new pods have been updated", ready=available, desired=want)
    if available < want:
        return Status(False, f"{available} of {updated} updated pods are available", ready=available, desired=want)
    return Status(True, "successfully rolled out", ready=available, desired=want)


def job_status(obj: dict | None, chart: str) -> Status:
    if obj is None:
        return Status(False, f"waiting for helm-controller to start the install job of {chart}", desired=1)
    failed = _condition(obj, "Failed")
    if failed and failed.get("status") == "True":
        return Status(
            False, f"install job {obj['metadata']['name']} failed: {failed.get('message', '')}", failed=True, desired=1
        )
    if (obj.get("status") or {}).get("succeeded", 0) >= 1:
        return Status(True, f"chart installed (job {obj['metadata']['name']} complete)", ready=1, desired=1)
    return Status(False, f"install job {obj['metadata']['name']} running", desired=1)


def plain_job_status(obj: dict) -> Status:
    """A Job of our own (not a chart's): complete, failed, or how far it got."""
    name, status = obj["metadata"]["name"], obj.get("status") or {}
    failed = _condition(obj, "Failed")
    if failed and failed.get("status") == "True":
        return Status(False, f"job {name} failed: {failed.get('message', '')}", failed=True, desired=1)
    if status.get("succeeded", 0) >= (obj.get("spec") or {}).get("completions", 1):
        return Status(True, f"job {name} complete", ready=1, desired=1)
    return Status(False, f"job {name} running ({status.get('failed', 0)} failed attempt(s))", desired=1)


class Waiter:
    def __init__(self, kube: Kube, interval: float = 0.5, *, changed_at: dict[tuple[str, str], str] | None = None):
        """`changed_at`: (namespace, name) of HelmCharts whose spec this run changed -> when (the
        server's time of the apply). Their install Job must be newer: the helm-controller deletes
        and recreates it, and until it has, the previous (complete) Job says nothing of the change."""
        self.kube = kube
        self.interval = interval
        self.changed_at = dict(changed_at or {})

    def status(self, target: Target) -> Status:
        obj = self.kube.get(target.api_version, target.kind, target.name, target.namespace)
        if obj is None:
            return Status(False, f"{target.describe()} not found in {target.namespace}", missing=True)
        if obj["metadata"].get("deletionTimestamp"):
            return Status(False, f"{target.describe()} is being deleted", terminating=True)
        if target.kind == "Deployment":
            return deployment_status(obj)
        if target.kind == "StatefulSet":
            return statefulset_status(obj)
        if target.kind == "DaemonSet":
            return daemonset_status(obj)
        if target.kind == "Job":
            return plain_job_status(obj)
        job_name = (obj.get("status") or {}).get("jobName") or f"helm-install-{target.name}"
        failed = _condition(obj, "Failed")
        job = self.kube.get("batch/v1", "Job", job_name, target.namespace)
        changed = self.changed_at.get((target.namespace, target.name), "")
        if job is not None and changed and job["metadata"].get("creationTimestamp", "") < changed:
            # RFC 3339 UTC timestamps compare as text. The Job predates the change: not its result.
            return Status(False, f"waiting for helm-controller to rerun the install job of {target.name}", desired=1)
        if failed and failed.get("status") == "True":
            return Status(False, f"helm chart failed: {failed.get('message', '')}", failed=True, desired=1)
        return job_status(job, target.name)

    def wait(
        self, items: list[Target], timeout: float, on_progress: Callable[[dict[Target, Status]], None] = lambda s: None
    ) -> dict[Target, Status]:
        deadline = time.monotonic() + timeout
        statuses: dict[Target, Status] = {}
        pending = list(items)
        while True:
            for target in pending:
                statuses[target] = self.status(target)
            on_progress(dict(statuses))
            pending = [t for t in pending if not statuses[t].done]
            failed = [t for t in pending if statuses[t].failed]
            if not pending:
                return statuses
            if failed or time.monotonic() >= deadline:
                raise RolloutError(self.explain(pending, statuses, timeout if not failed else None), statuses)
            time.sleep(self.interval)

    # -- why ----------------------------------------------------------------------------------
    def explain(self, pending: list[Target], statuses: dict[Target, Status], timeout: float | None) -> str:
        head = f"timed out after {timeout:.0f}s waiting for" if timeout is not None else "failed:"
        lines = [f"{head} {', '.join(t.describe() for t in pending)}"]
        for target in pending:
            lines.append(f"{target.describe()} ({target.namespace}): {statuses[target].message}")
            lines.extend("  " + line for line in self._why(target))
            if target.kind == "HelmChart" and not statuses[target].missing:
                obj = self.kube.get(target.api_version, target.kind, target.name, target.namespace) or {}
                job = (obj.get("status") or {}).get("jobName") or f"helm-install-{target.name}"
                lines.append(f"  the install job's log says why: `kubectl -n {target.namespace} logs job/{job}`")
        return "\n".join(lines)

    def _why(self, target: Target) -> list[str]:
        obj = self.kube.get(target.api_version, target.kind, target.name, target.namespace) or {}
        lines = [
            f"condition {c['type']}={c['status']}: {c.get('reason', '')} {c.get('message', '')}".rstrip()
            for c in (obj.get("status") or {}).get("conditions") or []
            if c.get("status") != "True" or c.get("type") == "Failed"
        ]
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if target.kind == "HelmChart":
            selector = {"job-name": (obj.get("status") or {}).get("jobName") or f"helm-install-{target.name}"}
        if not selector:
            return lines
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
        for pod in self.kube.list("v1", "Pod", target.namespace, label_selector=label_selector)[:3]:
            name = pod["metadata"]["name"]
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                if cs.get("ready"):
                    continue
                state = cs.get("state") or {}
                why = state.get("waiting") or state.get("terminated") or {}
                lines.append(
                    f"pod {name} container {cs['name']}: {why.get('reason', 'not ready')} "
                    f"{why.get('message', '')}".rstrip()
                )
                tail = self.kube.log_tail(target.namespace, name, cs["name"], lines=10).strip()
                lines.extend(f"    | {line}" for line in tail.splitlines()[-10:])
            events = self.kube.list("v1", "Event", target.namespace, field_selector=f"involvedObject.name={name}")
            for event in sorted(events, key=lambda e: e.get("lastTimestamp") or "")[-5:]:
                lines.append(f"event {event.get('type', '')} {event.get('reason', '')}: {event.get('message', '')}")
        return lines
