"""When a workload is ready, judged from the object alone, by kubectl's rules.

The predicates follow `kubectl rollout status` (kubernetes/kubectl,
pkg/polymorphichelpers/rollout_status.go): a status older than the spec (observedGeneration <
generation) never counts; a Deployment is done when every replica is updated, no old one is
left and every updated one is available; a StatefulSet when all pods are ready at the update
revision; a DaemonSet when every scheduled pod is updated and available. Each returns a Status
whose message uses kubectl's own words. A CronJob has no rollout: cronjob_status judges it by the
Jobs it created and the time. Pure: no I/O, so unit tests check them field by field
(tests/unit/test_readiness.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Status:
    """One judgement of one workload: done, failed (no point waiting), or why not yet; counts in pods."""

    done: bool
    message: str  # kubectl's words: "2 of 3 updated replicas are available..."
    failed: bool = False
    ready: int = 0
    desired: int = 0
    missing: bool = False  # the object does not exist
    terminating: bool = False  # it is being deleted (a HelmChart while its helm-delete Job runs)


def condition(obj: dict, kind: str) -> dict | None:
    """The status condition of this type (e.g. "Failed"), or None."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def deployment_status(obj: dict) -> Status:
    """A Deployment (apps/v1 dict) by kubectl's DeploymentStatusViewer; a ProgressDeadlineExceeded
    condition is a failure."""
    spec, status, meta = obj.get("spec", {}), obj.get("status") or {}, obj["metadata"]
    want = spec.get("replicas", 1)
    updated, total, available = (status.get(k, 0) for k in ("updatedReplicas", "replicas", "availableReplicas"))
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return Status(False, "waiting for deployment spec update to be observed", ready=available, desired=want)
    progressing = condition(obj, "Progressing")
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
    """A StatefulSet (apps/v1 dict) by kubectl's StatefulSetStatusViewer (RollingUpdate: ready pods,
    then currentRevision == updateRevision)."""
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
    """A DaemonSet (apps/v1 dict) by kubectl's DaemonSetStatusViewer."""
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
    """A HelmChart `chart` judged by its install Job (batch/v1 dict, None while K3s's helm-controller
    has not created it): done once the Job succeeded, failed when its Failed condition is True."""
    if obj is None:
        return Status(False, f"waiting for helm-controller to start the install job of {chart}", desired=1)
    failed = condition(obj, "Failed")
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
    failed = condition(obj, "Failed")
    if failed and failed.get("status") == "True":
        return Status(False, f"job {name} failed: {failed.get('message', '')}", failed=True, desired=1)
    if status.get("succeeded", 0) >= (obj.get("spec") or {}).get("completions", 1):
        return Status(True, f"job {name} complete", ready=1, desired=1)
    return Status(False, f"job {name} running ({status.get('failed', 0)} failed attempt(s))", desired=1)


# -- CronJob: judged by its Jobs, not rolled out ------------------------------------------------
def timestamp(text: str | None) -> datetime | None:
    """An RFC 3339 time as the API writes it (2026-11-30T03:17:00Z), None when absent or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(seconds: float) -> str:
    """A duration as kubectl's AGE column shows it, in its largest whole unit: 45s, 12m, 5h, 3d."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def owned_jobs(cronjob: dict, jobs: list[dict]) -> list[dict]:
    """The Jobs among `jobs` that `cronjob` created (an ownerReference to it, by name and, when both
    carry one, uid), newest first (by creationTimestamp)."""
    meta = cronjob["metadata"]
    mine = [
        job
        for job in jobs
        if any(
            ref.get("kind") == "CronJob"
            and ref.get("name") == meta["name"]
            and (not meta.get("uid") or not ref.get("uid") or ref["uid"] == meta["uid"])
            for ref in job["metadata"].get("ownerReferences") or []
        )
    ]
    return sorted(mine, key=lambda job: job["metadata"].get("creationTimestamp") or "", reverse=True)


def cronjob_status(cronjob: dict, jobs: list[dict], now: datetime, interval: float) -> tuple[str, Status]:
    """(the last success's age — "5h ago", "never yet" — or "suspended"; the judgement) of a CronJob
    (batch/v1 or v1beta1 dict) from the Jobs it created and `now`; `interval` is the longest time
    between two of its runs, in seconds. The last success is status.lastSuccessfulTime (Kubernetes
    1.21+) or the newest completionTime of its complete Jobs (1.20 has no such field). Not done when
    its newest Job failed (failed), or when the last success — or, with none yet, its creation — is
    older than twice `interval`. A suspended CronJob is done: it was suspended on purpose."""
    meta, spec, status = cronjob["metadata"], cronjob.get("spec") or {}, cronjob.get("status") or {}
    mine = owned_jobs(cronjob, jobs)
    finished = [timestamp((j.get("status") or {}).get("completionTime")) for j in mine if _complete(j)]
    successes = [t for t in [timestamp(status.get("lastSuccessfulTime")), *finished] if t is not None]
    last = max(successes, default=None)
    since = f"{age((now - last).total_seconds())} ago" if last else "never yet"
    if spec.get("suspend"):
        return "suspended", Status(True, f"suspended; last success {since}", ready=1, desired=1)
    failed = condition(mine[0], "Failed") if mine else None
    if failed and failed.get("status") == "True":
        why = ": ".join(x for x in (failed.get("reason"), failed.get("message")) if x)
        message = f"its last job {mine[0]['metadata']['name']} failed ({why}); last success {since}"
        return since, Status(False, message, failed=True, desired=1)
    every = f"every {age(interval)}"
    if last is not None:
        if (now - last).total_seconds() > 2 * interval:
            return since, Status(False, f"last success {since}, over twice its interval ({every})", desired=1)
        return since, Status(True, f"last success {since}", ready=1, desired=1)
    created = timestamp(meta.get("creationTimestamp"))
    if created is not None and (now - created).total_seconds() > 2 * interval:
        message = f"no success yet, {age((now - created).total_seconds())} after its creation (runs {every})"
        return since, Status(False, message, desired=1)
    return since, Status(True, f"no run yet (runs {every})", ready=1, desired=1)


def _complete(job: dict) -> bool:
    done = condition(job, "Complete")
    return bool(done and done.get("status") == "True") or (job.get("status") or {}).get("succeeded", 0) >= 1
