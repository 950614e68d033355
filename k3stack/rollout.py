"""Wait for workloads like `kubectl rollout status`, all at once, with progress; when one does
not become ready in time, say why: its conditions, recent events and the last log lines of
its failing pods."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .errors import K3stackError
from .kinds import WAITED_KINDS, status_of
from .kube import Kube
from .manifests import Manifest, describe
from .readiness import Status, condition, job_status


@dataclass(frozen=True)
class Target:
    """One object to wait for, as the API names it; `namespace` is "" for cluster-scoped kinds."""

    api_version: str
    kind: str
    namespace: str
    name: str

    def describe(self) -> str:
        """kubectl's spelling of the object: deployment.apps/ollama, helmchart.helm.cattle.io/netdata."""
        return describe(self.api_version, self.kind, self.name)


class RolloutError(K3stackError):
    """A wait ended before every target was done: the timeout passed, or a target failed. str() is
    the report of `Waiter.explain`; `statuses` holds the last Status of every target."""

    def __init__(self, report: str, statuses: dict[Target, Status]):
        self.statuses = statuses
        super().__init__(report)


OnDone = Callable[[Target, Status], None]
# Callbacks of `on_done` blocks around this context's waits (deploy's model pulls, started when
# Ollama is Ready, while the other workloads are still waited on).
_on_done: ContextVar[tuple[OnDone, ...]] = ContextVar("k3stack_rollout_on_done", default=())


@contextmanager
def on_done(callback: OnDone) -> Iterator[None]:
    """While the block runs, every Waiter.wait made in this context (this thread) calls
    `callback(target, status)` once per target, in the round it is first seen done, after that
    round's progress: the caller starts what needs that workload (the model pulls need Ollama)
    while the others are still waited on. The callback runs in the waiting thread, so it must
    return at once (hand long work to a thread); an exception from it ends the wait."""
    token = _on_done.set((*_on_done.get(), callback))
    try:
        yield
    finally:
        _on_done.reset(token)


def targets(manifests: Iterable[Manifest]) -> list[Target]:
    """The manifests whose kind is waited for (k3stack.kinds: Deployment, StatefulSet, DaemonSet,
    HelmChart), as Targets in the order given."""
    return [Target(m.obj["apiVersion"], m.kind, m.namespace or "", m.name) for m in manifests if m.kind in WAITED_KINDS]


class Waiter:
    """Waits for targets like `kubectl rollout status`, all at once, polling every `interval`
    seconds through `kube`; explains a target that does not get ready."""

    def __init__(self, kube: Kube, interval: float = 0.5, *, changed_at: dict[tuple[str, str], str] | None = None):
        """`changed_at`: (namespace, name) of HelmCharts whose spec this run changed -> when (the
        server's time of the apply). Their install Job must be newer: the helm-controller deletes
        and recreates it, and until it has, the previous (complete) Job says nothing of the change."""
        self.kube = kube
        self.interval = interval
        self.changed_at = dict(changed_at or {})

    def status(self, target: Target, obj: dict | None = None) -> Status:
        """A target's readiness now, from one or two GETs: `missing` when it does not exist,
        `terminating` while it is being deleted; otherwise its kind's readiness rule (k3stack.kinds ->
        k3stack.readiness). A HelmChart has no rule of its own: not done while its install Job
        (status.jobName, by default helm-install-<name>) predates this run's change of the chart
        (`changed_at`); else failed when its Failed condition is True; else the Job's status. Raises
        KubeError (ApiError) when the API does."""
        if obj is None:
            obj = self.kube.get(target.api_version, target.kind, target.name, target.namespace)
        if obj is None:
            return Status(False, f"{target.describe()} not found in {target.namespace}", missing=True)
        if obj["metadata"].get("deletionTimestamp"):
            return Status(False, f"{target.describe()} is being deleted", terminating=True)
        if judge := status_of(target.api_version, target.kind):
            return judge(obj)
        job_name = (obj.get("status") or {}).get("jobName") or f"helm-install-{target.name}"
        failed = condition(obj, "Failed")
        job = self.kube.get("batch/v1", "Job", job_name, target.namespace)
        changed = self.changed_at.get((target.namespace, target.name), "")
        if job is not None and changed and job["metadata"].get("creationTimestamp", "") < changed:
            # RFC 3339 UTC timestamps compare as text. The Job predates the change: not its result.
            return Status(False, f"waiting for helm-controller to rerun the install job of {target.name}", desired=1)
        if failed and failed.get("status") == "True":
            return Status(False, f"helm chart failed: {failed.get('message', '')}", failed=True, desired=1)
        return job_status(job, target.name)

    def wait(
        self,
        items: list[Target],
        timeout: float,
        on_progress: Callable[[dict[Target, Status]], None] = lambda s: None,
        known: dict[Target, dict] | None = None,
        on_done: OnDone | None = None,
    ) -> dict[Target, Status]:
        """Poll every pending target every `interval` seconds until all are done; `timeout` in seconds.
        `on_progress` gets a copy of every target's latest Status after each round. Returns the final
        statuses. `known`: objects already read (the answers of the apply that just ran, status included),
        judged in the first round instead of a GET, so a workload already rolled out costs no request.
        `on_done(target, status)` (and the callbacks of the `on_done` blocks around this wait) once per
        target, in the round it is done, after `on_progress`.
        Raises RolloutError (report from `explain`) as soon as a pending target has failed, or once
        `timeout` has passed; KubeError when the API fails."""
        deadline = time.monotonic() + timeout
        statuses: dict[Target, Status] = {}
        pending = list(items)
        known = dict(known or {})  # the first round judges these as given (an apply's answer): no GET
        callbacks = (*_on_done.get(), *([on_done] if on_done is not None else []))
        while True:
            for target in pending:
                statuses[target] = self.status(target, known.pop(target, None))
            on_progress(dict(statuses))
            for target in pending:
                if statuses[target].done:
                    for callback in callbacks:
                        callback(target, statuses[target])
            pending = [t for t in pending if not statuses[t].done]
            failed = [t for t in pending if statuses[t].failed]
            if not pending:
                return statuses
            if failed or time.monotonic() >= deadline:
                raise RolloutError(self.explain(pending, statuses, timeout if not failed else None), statuses)
            time.sleep(self.interval)

    # -- why ----------------------------------------------------------------------------------
    def explain(self, pending: list[Target], statuses: dict[Target, Status], timeout: float | None) -> str:
        """The report for a RolloutError: a first line (`timed out after Ns waiting for ...`, or
        `failed:` when `timeout` is None), then per pending target its status message, its conditions
        that are not True (and a Failed one), and for up to 3 of its pods each container that is not
        ready — reason, last 10 log lines, the pod's last 5 events; for a HelmChart, the kubectl command
        showing its install Job's log. Makes API requests to gather this."""
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
