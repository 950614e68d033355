"""pytest fixtures for the test bed: `kube` (a real Kubernetes API) and `ssh_hosts` (real sshd hosts).

Where the bed cannot run (not root, tools missing) its tests skip with a one-line reason;
under CI=true or K3STACK_REQUIRE_TESTBED=1 (`inv test --require-testbed`) every such skip is a failure instead, so CI
cannot pass without having run them. K3STACK_TEST_KUBECONFIG points `kube` at a cluster of
your own (kind, k3d, ...) instead of the built-in control plane.
"""

from __future__ import annotations

import atexit
import os
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.prereqs import FIX, required, unavailable

from .cluster import KubeBed
from .hosts import HostFactory, SshHosts
from .local import BedError, have
from .slot import Slot

BED_MARKERS = ("kube", "ssh")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kube: needs a Kubernetes API (the `kube` fixture)")
    config.addinivalue_line("markers", "ssh: needs test hosts with sshd (the `ssh_hosts` fixture)")
    # A SIGTERM (CI timeout, `kill`) unwinds like Ctrl-C, so fixture teardown still runs.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "kube" in fixtures:
            item.add_marker("kube")
        if "ssh_hosts" in fixtures:
            item.add_marker("ssh")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if required() and report.skipped and any(item.get_closest_marker(m) for m in BED_MARKERS):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped, but CI / --require-testbed forbid skipping bed tests: {reason}"
    return report


def _preconditions() -> str | None:
    if os.geteuid() != 0:
        return "the test bed needs root (network namespaces, mounts)"
    for program in ("ip", "unshare", "nsenter"):
        if not have(program):
            return f"{program} not installed"
    return None


@pytest.fixture(scope="session")
def bed_slot() -> Iterator[Slot]:
    """This run's claim on bridge, subnet and namespace names; stale beds are swept first."""
    if reason := _preconditions():
        unavailable(reason, "run the tests as root: inv test" if "root" in reason else FIX)
    Slot.sweep_stale()
    slot = Slot.claim()
    atexit.register(slot.release)
    try:
        yield slot
    finally:
        slot.release()


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[KubeBed]:
    """A real Kubernetes API with an admin kubeconfig, shared by the whole run."""
    external = os.environ.get("K3STACK_TEST_KUBECONFIG")
    if external:
        yield KubeBed.external(external)
        return
    if not have("etcd"):
        unavailable("etcd not installed")
    slot = request.getfixturevalue("bed_slot")
    try:
        bed = KubeBed.start(slot)
    except BedError as exc:
        unavailable(str(exc))
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture
def namespace(kube: KubeBed) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for finalization)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube.api())
    core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
    try:
        yield name
    finally:
        if kube.sim is not None:
            kube.sim.clear()
        core.delete_namespace(name, _preload_content=False)


@pytest.fixture
def ssh_hosts(request: pytest.FixtureRequest) -> Iterator[Callable[[int], SshHosts]]:
    """`ssh_hosts(n)` → n fresh hosts (own IP, root filesystem, hostname, sshd); gone after the test."""
    if not have("sshd") and not os.path.exists("/usr/sbin/sshd"):
        unavailable("sshd not installed")
    factory = HostFactory(request.getfixturevalue("bed_slot"))
    try:
        yield factory.create
    finally:
        factory.remove_all()
