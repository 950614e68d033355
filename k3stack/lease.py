"""One deploy at a time per stack: a coordination.k8s.io/v1 Lease held for the run.

The Lease `k3stack-deploy` lives in the stack's namespace (created, and recorded as created by
k3stack, when it is not there yet). Its holder is `user@host pid N`; the holder renews it every
DURATION/3 seconds, and deletes it at the end. A second run waits (up to `wait` seconds) while a
live holder renews it, then stops with who holds it; a holder that died stops renewing and its
Lease expires DURATION seconds after its last renewal, when the next run takes it over. Taking
and taking over are writes with the Lease's resourceVersion as precondition (optimistic
concurrency, as client-go's leader election does), so two runs can never both win.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .apply import record_created
from .errors import K3stackError
from .kube import ApiError, Kube

NAME = "k3stack-deploy"
DURATION = 60  # seconds a Lease stays valid after its last renewal


class LeaseHeldError(K3stackError):
    """Another run holds the stack's deploy Lease."""


def holder_identity() -> str:
    """Who we are, for the Lease and the message another run shows: `user@host pid N`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _now() -> str:
    """MicroTime, as Lease fields want it (RFC 3339, microseconds, UTC)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age(stamp: str | None) -> float:
    """Seconds since a MicroTime (or RFC 3339) stamp; infinite when absent or unreadable."""
    if not stamp:
        return float("inf")
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


def expired(lease: dict) -> bool:
    """Whether a Lease's holder stopped renewing it: released (no holder), or its renewTime older
    than its leaseDurationSeconds."""
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    return _age(spec.get("renewTime") or spec.get("acquireTime")) > float(spec.get("leaseDurationSeconds") or DURATION)


def _ensure_namespace(kube: Kube, namespace: str, instance: str) -> None:
    if kube.get("v1", "Namespace", namespace) is not None:
        return
    try:
        kube.request(
            "POST",
            "/api/v1/namespaces",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
    except ApiError as exc:
        if exc.status != 409:  # created meanwhile by the other run: fine
            raise
        return
    record_created(kube, namespace, instance)  # ours: a purge may delete it


def _body(namespace: str, holder: str, resource_version: str | None, acquired: str) -> dict:
    meta = {"name": NAME, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "k3stack"}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    now = _now()
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": DURATION, "acquireTime": acquired, "renewTime": now},
    }


def _try_take(kube: Kube, namespace: str, holder: str) -> dict | None:
    """Take the Lease if free or expired; None when a live holder has it (the Lease it has)."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    current = kube.get("coordination.k8s.io/v1", "Lease", NAME, namespace)
    try:
        if current is None:
            kube.request("POST", path, body=_body(namespace, holder, None, _now()))
            return None
        if not expired(current):
            return current
        version = current["metadata"]["resourceVersion"]
        kube.request("PUT", f"{path}/{NAME}", body=_body(namespace, holder, version, _now()))
        return None
    except ApiError as exc:
        if exc.status == 409:  # the other run won this round: read who, and wait
            return kube.get("coordination.k8s.io/v1", "Lease", NAME, namespace) or {}
        raise


@contextmanager
def held(
    kube: Kube,
    namespace: str,
    *,
    wait: float = 120,
    on_wait: Callable[[str], None] = lambda text: None,
    holder: str | None = None,
    poll: float = 2.0,
) -> Iterator[str]:
    """Hold the stack's deploy Lease in `namespace` for the block; yields the holder identity.

    Waits up to `wait` seconds (polling every `poll`) while another live run holds it, calling
    `on_wait` once with who; then raises LeaseHeldError naming the holder, since when, and when the
    Lease would expire. Renewed in the background every DURATION/3 s; deleted when the block ends
    (also on Ctrl-C or an error). Raises KubeError when the cluster cannot be asked.
    """
    holder = holder or holder_identity()
    _ensure_namespace(kube, namespace, namespace)
    deadline = time.monotonic() + wait
    told = False
    while (other := _try_take(kube, namespace, holder)) is not None:
        spec = other.get("spec") or {}
        who = spec.get("holderIdentity") or "another run"
        since = spec.get("acquireTime") or "?"
        if not told:
            on_wait(f"waiting for {who} (deploying {namespace} since {since}) to finish")
            told = True
        if time.monotonic() + poll > deadline:
            left = max(0.0, float(spec.get("leaseDurationSeconds") or DURATION) - _age(spec.get("renewTime")))
            raise LeaseHeldError(
                f"{namespace}: another deploy holds the stack (lease {namespace}/{NAME}: {who}, since {since})",
                f"wait for it to finish; if that run is dead its lease expires within {left:.0f}s, then run again",
            )
        time.sleep(poll)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(DURATION / 3):
            try:
                current = kube.get("coordination.k8s.io/v1", "Lease", NAME, namespace)
                if current and (current.get("spec") or {}).get("holderIdentity") == holder:
                    current["spec"]["renewTime"] = _now()
                    kube.request(
                        "PUT",
                        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{NAME}",
                        body=current,
                    )
            except K3stackError:
                pass  # the next renewal tries again; the Lease is valid for DURATION meanwhile

    renewer = threading.Thread(target=renew, name=f"lease-{namespace}", daemon=True)
    renewer.start()
    try:
        yield holder
    finally:
        stop.set()
        current = kube.get("coordination.k8s.io/v1", "Lease", NAME, namespace)
        if current and (current.get("spec") or {}).get("holderIdentity") == holder:
            kube.delete("coordination.k8s.io/v1", "Lease", NAME, namespace)
