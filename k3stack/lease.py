"""One deploy at a time per stack: a coordination.k8s.io/v1 Lease held for the run.

The Lease `k3stack-deploy` lives in the stack's namespace (created, and recorded as created by
k3stack, when it is not there yet). Its holder is `user@host pid N`; the holder renews it every
DURATION/3 seconds, and deletes it at the end. A second run waits (up to `wait` seconds) while a
live holder renews it, then stops with who holds it; a holder that died stops renewing and its
Lease expires DURATION seconds after its last renewal, when the next run takes it over.

Taking it is a create (the API server lets one create of a name win; the others get 409), so a run
nobody contends with makes two requests in all: the create and, at the end, the delete. Only a
conflicting create reads the Lease; taking over an expired one is an update carrying the
resourceVersion read (optimistic concurrency, as client-go's leader election does), so two runs can
never both win. The delete has the uid and resourceVersion of our last write as preconditions: a
Lease another run has taken over since (or created anew) fails them (409) and is left alone.
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


def _leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def _read(kube: Kube, namespace: str) -> dict | None:
    return kube.get("coordination.k8s.io/v1", "Lease", NAME, namespace)


def _create_namespace(kube: Kube, namespace: str, instance: str) -> None:
    """Create the namespace the Lease lives in, recorded as the stack's; one created meanwhile by
    another run (409) is left as it is."""
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


def _create(kube: Kube, namespace: str, holder: str) -> dict:
    """POST the Lease: the Lease as written, ours. A namespace that is not there fails the create
    with 404 (the API server's NamespaceLifecycle admission): it is created, then the Lease."""
    try:
        return kube.request("POST", _leases(namespace), body=_body(namespace, holder, None, _now()))
    except ApiError as exc:
        if exc.status != 404:
            raise
    _create_namespace(kube, namespace, namespace)
    return kube.request("POST", _leases(namespace), body=_body(namespace, holder, None, _now()))


def _try_take(kube: Kube, namespace: str, holder: str, current: dict | None) -> tuple[dict | None, dict]:
    """One try at the Lease: (the Lease as we wrote it, {}) when taken, else (None, the Lease a live
    holder has; {} when it could not be read). `current` is the Lease as last read: None (not read,
    or not there) tries a create, and reads the Lease only when that conflicts; an expired one is
    taken over with an update carrying its resourceVersion."""
    if current is None:
        try:
            return _create(kube, namespace, holder), {}
        except ApiError as exc:
            if exc.status != 409:  # 409: it exists; read whose it is
                raise
        current = _read(kube, namespace)
        if current is None:  # let go between our create and read: the next try creates it
            return None, {}
    if not expired(current):
        return None, current
    version = current["metadata"]["resourceVersion"]
    try:
        return kube.request("PUT", f"{_leases(namespace)}/{NAME}", body=_body(namespace, holder, version, _now())), {}
    except ApiError as exc:
        if exc.status == 409:  # the other run took it over first: read who, and wait
            return None, _read(kube, namespace) or {}
        raise


def _release(kube: Kube, namespace: str, mine: dict) -> None:
    """Delete the Lease as we last wrote it (no read first): its uid and resourceVersion are the
    delete's preconditions, so a Lease another run has taken over or created since fails them (409)
    and stays; one already gone (404) is fine."""
    meta = mine.get("metadata") or {}
    options = {"preconditions": {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}}
    try:
        kube.request("DELETE", f"{_leases(namespace)}/{NAME}", body=options)
    except ApiError as exc:
        if exc.status not in (404, 409):
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

    Waits up to `wait` seconds (polling every `poll`, one read each) while another live run holds
    it, calling `on_wait` once with who; then raises LeaseHeldError naming the holder, since when,
    and when the Lease would expire. Renewed in the background every DURATION/3 s; deleted when the
    block ends (also on Ctrl-C or an error), unless another run has taken it over meanwhile. Raises
    KubeError when the cluster cannot be asked.
    """
    holder = holder or holder_identity()
    deadline = time.monotonic() + wait
    told = False
    current = None  # the Lease as last read: none yet, so the first try is a create
    while True:
        mine, other = _try_take(kube, namespace, holder, current)
        if mine is not None:
            break
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
        current = _read(kube, namespace)  # one read a round; a create once it is gone
    stop = threading.Event()
    writing = threading.Lock()  # a renewal under way finishes before the release reads `mine`

    def renew() -> None:
        nonlocal mine
        while not stop.wait(DURATION / 3):
            with writing:
                if stop.is_set():
                    return
                try:
                    current = _read(kube, namespace)
                    if current and (current.get("spec") or {}).get("holderIdentity") == holder:
                        current["spec"]["renewTime"] = _now()
                        mine = kube.request("PUT", f"{_leases(namespace)}/{NAME}", body=current)
                except K3stackError:
                    pass  # the next renewal tries again; the Lease is valid for DURATION meanwhile

    try:
        threading.Thread(target=renew, name=f"lease-{namespace}", daemon=True).start()
        yield holder
    finally:
        stop.set()
        with writing:
            _release(kube, namespace, mine)
