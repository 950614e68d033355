"""When a workload is ready, judged from the object alone, by kubectl's rules.

The predicates follow `kubectl rollout status` (kubernetes/kubectl,
pkg/polymorphichelpers/rollout_status.go): a status older than the spec (observedGeneration <
generation) never counts; a Deployment is done when every replica is updated, no old one is
left and every updated one is available; a StatefulSet when all pods are ready at the update
revision; a DaemonSet when every scheduled pod is updated and available. Each returns a Status
whose message uses kubectl's own words. Pure: no I/O, so unit tests check them field by field
(tests/unit/test_readiness.py).
"""

from __future__ import annotations

from dataclasses import dataclass


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
