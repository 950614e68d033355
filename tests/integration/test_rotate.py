"""Password rotation against the real PostgreSQL, Redis and Open WebUI of the bed (issue 14: "a password
rotation test against the real PostgreSQL and Redis of the bed proves the app keeps working with the new
password and the old one is refused"), each failed halfway on purpose first: the re-run converges."""

from __future__ import annotations

import io
import time

import pytest

from k3stack import backup as bk
from k3stack import rotate as rt
from k3stack.console import Console
from k3stack.kube import KubeError
from tests.testbed.real.components import webui_api
from tests.testbed.real.exec import exec_enabled
from tests.testbed.real.plugin import ADMIN_PASSWORD, NETDATA_PASSWORD


@pytest.fixture
def kubelet(real_stack):
    real_stack.forget_signins()
    with exec_enabled(real_stack) as served:
        yield served


class FailingKube:
    """The stack's Kube, whose first apply of `kind/name` fails (the API went away)."""

    def __init__(self, kube, what: str):
        self.kube, self.what, self.failed = kube, what, False

    def __getattr__(self, name):
        return getattr(self.kube, name)

    def apply(self, obj, **kw):
        if f"{obj['kind']}/{obj['metadata']['name']}" == self.what and not self.failed:
            self.failed = True
            raise KubeError(f"injected: applying {self.what} failed")
        return self.kube.apply(obj, **kw)


def accepted(signs_in, password: str, which: str) -> None:
    """Fail (showing no password) unless `password` signs in."""
    __tracebackhide__ = True  # pytest would print this frame's arguments
    if not signs_in(password):
        pytest.fail(f"the {which} password does not sign in")


def refused(signs_in, password: str, which: str) -> None:
    """Fail (showing no password) if `password` still signs in."""
    __tracebackhide__ = True
    if signs_in(password):
        pytest.fail(f"the {which} password still signs in")


def _signin(real_stack) -> bool:
    ip = real_stack.webui().ip
    body = {"email": real_stack.plan.settings["WEBUI_ADMIN_EMAIL"], "password": ADMIN_PASSWORD}
    status, data = webui_api(ip, "POST", "/api/v1/auths/signin", body=body)
    return status == 200 and bool(data.get("token"))


def _rotate(real_stack, console, setting, *, kube=None, **kw):
    def wait(names):  # the rollout rules, then the bed's kubelet restarts what rolled
        rt._wait(real_stack.kube, real_stack.namespace, names, console, 120)
        real_stack.sync()

    return rt.rotate(kube or real_stack.kube, real_stack.settings(), setting, console, wait=wait, **kw)


def _live(real_stack) -> rt._Live:
    return rt._Live(real_stack.kube, real_stack.settings(), bk.PodExec(real_stack.kube))


def _app_works_and_deploy_is_a_no_op(real_stack) -> None:
    before = real_stack.kube.get("apps/v1", "Deployment", "open-webui", real_stack.namespace)["metadata"]["generation"]
    report = real_stack.deploy()  # reads the rotated Secrets: nothing to change, no second roll
    assert not report.changed, [(r.describe, r.action) for r in report.results if r.action != "unchanged"]
    after = real_stack.kube.get("apps/v1", "Deployment", "open-webui", real_stack.namespace)["metadata"]["generation"]
    assert after == before
    real_stack.forget_signins()
    assert _signin(real_stack), "Open WebUI does not work after the rotation"
    status, _ = webui_api(real_stack.webui().ip, "GET", "/health/db")
    assert status == 200


def test_postgres_password_rotation_failed_halfway_then_converges(real_stack, kubelet):
    printed = io.StringIO()
    console = Console(stream=printed, interactive=False)
    old = real_stack.plan.secrets.values["POSTGRES_PASSWORD"]
    live = _live(real_stack)
    accepted(live.pg_signs_in, old, "old")

    # Fails after ALTER ROLE and the Secret `postgres`, before DATABASE_URL: nothing lost.
    failing = FailingKube(real_stack.kube, "Secret/open-webui")
    with pytest.raises(KubeError, match="injected"):
        _rotate(real_stack, console, "POSTGRES_PASSWORD", kube=failing)
    assert real_stack.kube.get("v1", "Secret", rt.journal_name("POSTGRES_PASSWORD"), real_stack.namespace)
    refused(live.pg_signs_in, old, "old")  # the database already has the new password

    begun = time.monotonic()
    result = _rotate(real_stack, console, "POSTGRES_PASSWORD")
    seconds = time.monotonic() - begun
    assert result.resumed
    assert result.steps == [
        ("journal", "already"),
        ("live postgres", "already"),
        ("secret postgres", "already"),
        ("secret open-webui", "done"),
        ("rollout open-webui", "done"),
        ("verify", "done"),
        ("journal removed", "done"),
    ]
    assert real_stack.kube.get("v1", "Secret", rt.journal_name("POSTGRES_PASSWORD"), real_stack.namespace) is None
    _app_works_and_deploy_is_a_no_op(real_stack)
    new = real_stack.plan.secrets.values["POSTGRES_PASSWORD"]
    if new == old:
        pytest.fail("the password did not change")
    accepted(live.pg_signs_in, new, "new")
    refused(live.pg_signs_in, old, "old")
    if old in printed.getvalue():
        pytest.fail("a password was printed")
    if new in printed.getvalue():
        pytest.fail("a password was printed")
    print(f"\nPOSTGRES_PASSWORD re-run after the failure: {seconds:.1f}s")

    # A second, uninterrupted rotation (generated value) in one go.
    begun = time.monotonic()
    again = _rotate(real_stack, console, "POSTGRES_PASSWORD")
    print(f"POSTGRES_PASSWORD rotation: {time.monotonic() - begun:.1f}s")
    assert not again.resumed
    assert all(how == "done" for _, how in again.steps)
    _app_works_and_deploy_is_a_no_op(real_stack)
    refused(live.pg_signs_in, new, "new")


def test_redis_password_rotation_failed_halfway_then_converges(real_stack, kubelet):
    printed = io.StringIO()
    console = Console(stream=printed, interactive=False)
    old = real_stack.plan.secrets.values["REDIS_PASSWORD"]
    new = 'new redis "pass word" with \\ and # and spaces'
    live = _live(real_stack)
    accepted(live.redis_signs_in, old, "old")
    real_stack.settings(REDIS_PASSWORD=new)  # the settings hold it (fixture): changed there first

    failing = FailingKube(real_stack.kube, "Secret/redis")  # after CONFIG SET, before any Secret
    with pytest.raises(KubeError, match="injected"):
        _rotate(real_stack, console, "REDIS_PASSWORD", kube=failing)
    accepted(live.redis_signs_in, new, "new")
    refused(live.redis_signs_in, old, "old")

    begun = time.monotonic()
    result = _rotate(real_stack, console, "REDIS_PASSWORD")
    seconds = time.monotonic() - begun
    assert result.resumed
    assert [how for _, how in result.steps][:3] == ["already", "already", "done"]
    _app_works_and_deploy_is_a_no_op(real_stack)
    if real_stack.plan.secrets.values["REDIS_PASSWORD"] != new:
        pytest.fail("deploy does not read the rotated REDIS_PASSWORD")
    assert real_stack.redis("PING") == "PONG"  # the restarted redis-server read the new redis.conf
    assert real_stack.signins() >= 1  # Open WebUI counted the sign-in in Redis: it uses the new password
    live = _live(real_stack)
    accepted(live.redis_signs_in, new, "new")
    refused(live.redis_signs_in, old, "old")
    if old in printed.getvalue():
        pytest.fail("a password was printed")
    if new in printed.getvalue():
        pytest.fail("a password was printed")
    print(f"\nREDIS_PASSWORD re-run after the failure (incl. the bed restarting Redis and Open WebUI): {seconds:.1f}s")


def test_webui_secret_key_and_netdata_password(real_stack, kubelet):
    console = Console(stream=io.StringIO(), interactive=False)
    ip = real_stack.webui().ip
    body = {"email": real_stack.plan.settings["WEBUI_ADMIN_EMAIL"], "password": ADMIN_PASSWORD}
    status, data = webui_api(ip, "POST", "/api/v1/auths/signin", body=body)
    assert status == 200
    token = data["token"]
    result = _rotate(real_stack, console, "WEBUI_SECRET_KEY")
    assert result.warnings
    assert "signed out" in result.warnings[0]
    status, _ = webui_api(ip, "GET", "/api/v1/auths/", token=token)
    assert status == 401, "a session signed with the old key still works"
    _app_works_and_deploy_is_a_no_op(real_stack)

    real_stack.settings(NETDATA_PASSWORD="a new netdata password")
    try:
        result = _rotate(real_stack, console, "NETDATA_PASSWORD")
        assert ("verify", "done") in result.steps
        _app_works_and_deploy_is_a_no_op(real_stack)
    finally:  # the stack is shared by the run: later tests sign in to Netdata with the fixture's password
        real_stack.settings(NETDATA_PASSWORD=NETDATA_PASSWORD)
        assert ("verify", "done") in _rotate(real_stack, console, "NETDATA_PASSWORD").steps
        _app_works_and_deploy_is_a_no_op(real_stack)  # and real_stack.plan holds the password again
