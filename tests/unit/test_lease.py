"""The deploy Lease (k3stack/lease.py): its expiry rule, and taking and letting go of it — two
requests when nobody else wants it (a create, a delete with preconditions), a read only on conflict."""

import copy
import datetime as dt
import re
import threading
import time

import pytest

from k3stack import apply, lease
from k3stack.kube import ApiError
from tests.unit.test_deploy_requests import CountingKube, FakeApi


def stamp(seconds_ago: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_renewed_lease_is_live_and_a_silent_one_expires():
    live = {"spec": {"holderIdentity": "a@h pid 1", "leaseDurationSeconds": 60, "renewTime": stamp(10)}}
    assert not lease.expired(live)
    dead = {"spec": {"holderIdentity": "a@h pid 1", "leaseDurationSeconds": 60, "renewTime": stamp(61)}}
    assert lease.expired(dead)
    short = {"spec": {"holderIdentity": "a@h pid 1", "leaseDurationSeconds": 5, "renewTime": stamp(10)}}
    assert lease.expired(short)


def test_a_released_or_unreadable_lease_is_free():
    assert lease.expired({"spec": {"renewTime": stamp(1)}})  # no holder
    assert lease.expired({"spec": {"holderIdentity": "x", "renewTime": "yesterday"}})
    assert not lease.expired({"spec": {"holderIdentity": "x", "acquireTime": stamp(1)}})  # never renewed yet


def test_the_holder_names_user_host_and_process():
    who = lease.holder_identity()
    assert who.count("@") == 1
    assert who.endswith(f"pid {__import__('os').getpid()}")


# -- taking and letting go, against the in-memory API server of test_deploy_requests ----------------

LEASES = "/apis/coordination.k8s.io/v1/namespaces/llm-stack/leases"
KEY = ("/apis/coordination.k8s.io/v1", "leases", "llm-stack", lease.NAME)
NAMESPACE = ("/api/v1", "namespaces", "", "llm-stack")
ME = "me@here pid 1"


class Recording(CountingKube):
    """CountingKube that keeps each request's body (`sent`: method, path, body) and runs `before`
    (method, path, body) ahead of each: another run's move, or an answer of its own to give (a
    dict: the request's answer; (status, message): an error)."""

    def __init__(self, api: FakeApi, before=lambda method, path, body: None):
        super().__init__(api)
        self.sent: list[tuple[str, str, dict | None]] = []
        self.before = before

    def request(self, method, path, *, query=(), body=None, content_type="application/json", timeout=30):
        self.sent.append((method, path, copy.deepcopy(body)))
        answer = self.before(method, path, body)
        if isinstance(answer, dict):
            return answer
        if answer is not None:
            self.requests[method] += 1
            raise ApiError(answer[0], {"message": answer[1]}, method, path)
        return super().request(method, path, query=query, body=body, content_type=content_type, timeout=timeout)


def cluster(*, holder: str | None = None, renewed: float = 0) -> FakeApi:
    """An API server with the stack's namespace, and the Lease of `holder` (renewed `renewed` s ago)."""
    api = FakeApi()
    api.store(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "llm-stack"}})
    if holder:
        api.store(KEY, other(holder, renewed))
    return api


def other(holder: str, renewed: float) -> dict:
    spec = {
        "holderIdentity": holder,
        "leaseDurationSeconds": 60,
        "acquireTime": stamp(300),
        "renewTime": stamp(renewed),
    }
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": lease.NAME}, "spec": spec}


def verbs(kube: Recording) -> list[str]:
    return [f"{method} {path.removeprefix(LEASES)}" for method, path, _ in kube.sent]


def test_an_uncontended_run_creates_the_lease_and_deletes_it_as_written_two_requests():
    api = cluster()
    kube = Recording(api)
    with lease.held(kube, "llm-stack", holder=ME) as who:
        assert who == ME
        written = copy.deepcopy(api.objects[KEY])
        assert written["spec"]["holderIdentity"] == ME
    assert verbs(kube) == ["POST ", f"DELETE /{lease.NAME}"]
    assert kube.sent[-1][2] == {
        "preconditions": {"uid": written["metadata"]["uid"], "resourceVersion": written["metadata"]["resourceVersion"]}
    }
    assert KEY not in api.objects


def test_a_stack_without_its_namespace_gets_it_created_and_recorded_then_the_lease():
    api = cluster()
    del api.objects[NAMESPACE]
    kube = Recording(api)
    with lease.held(kube, "llm-stack", holder=ME):
        assert api.objects[KEY]["spec"]["holderIdentity"] == ME
    assert verbs(kube) == [
        "POST ",  # 404: no namespace
        "POST /api/v1/namespaces",
        "PATCH /api/v1/namespaces/llm-stack",
        "POST ",
        f"DELETE /{lease.NAME}",
    ]
    assert api.objects[NAMESPACE]["metadata"]["annotations"][apply.CREATED_BY] == "llm-stack"


class Clock:
    """time.monotonic and time.sleep for lease.py: a sleep moves the clock on, at once."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_live_holder_is_waited_for_with_one_read_a_round_then_named(monkeypatch):
    monkeypatch.setattr(lease, "time", Clock())
    api = cluster(holder="ops@laptop pid 4242", renewed=5)
    before = copy.deepcopy(api.objects[KEY])
    kube = Recording(api)
    said = []
    with (
        pytest.raises(lease.LeaseHeldError) as held,
        lease.held(kube, "llm-stack", holder=ME, wait=5, poll=2, on_wait=said.append),
    ):
        pytest.fail("taken from a live holder")
    assert said == [
        f"waiting for ops@laptop pid 4242 (deploying llm-stack since {before['spec']['acquireTime']}) to finish"
    ]
    assert str(held.value).startswith(
        f"llm-stack: another deploy holds the stack (lease llm-stack/{lease.NAME}: ops@laptop pid 4242, since "
    )
    assert re.search(r"if that run is dead its lease expires within 5[45]s, then run again$", str(held.value))
    # 409; whose it is; then a read a round (at 2 s, and 4 s: one more would end past the 5 s)
    assert verbs(kube) == ["POST ", f"GET /{lease.NAME}", f"GET /{lease.NAME}", f"GET /{lease.NAME}"]
    assert api.objects[KEY] == before  # neither written nor let go


@pytest.mark.parametrize(("reads", "waiting_for"), [(2, "ops@laptop pid 4242"), (1, "another run")])
def test_a_lease_let_go_while_waiting_is_created_on_the_next_round(monkeypatch, reads, waiting_for):
    """Let go after our first poll, or between our create's 409 and the read of whose it is."""
    monkeypatch.setattr(lease, "time", Clock())
    api = cluster(holder="ops@laptop pid 4242", renewed=5)

    def let_go_before_read(method, path, body):
        if method == "GET" and verbs(kube).count(f"GET /{lease.NAME}") == reads:
            del api.objects[KEY]  # the holder finished

    kube = Recording(api, let_go_before_read)
    said = []
    with lease.held(kube, "llm-stack", holder=ME, wait=5, on_wait=said.append):
        assert api.objects[KEY]["spec"]["holderIdentity"] == ME
    assert len(said) == 1
    assert said[0].startswith(f"waiting for {waiting_for} (deploying llm-stack since ")
    # 409, whose it is (gone, or live), a poll's read (gone), the create
    assert verbs(kube) == ["POST ", f"GET /{lease.NAME}", f"GET /{lease.NAME}", "POST ", f"DELETE /{lease.NAME}"]
    assert KEY not in api.objects


def test_an_expired_lease_is_taken_over_by_an_update_carrying_the_version_read():
    api = cluster(holder="dead@host pid 9", renewed=61)
    dead = copy.deepcopy(api.objects[KEY]["metadata"])
    kube = Recording(api)
    said = []
    with lease.held(kube, "llm-stack", holder=ME, wait=0, on_wait=said.append):
        taken = copy.deepcopy(api.objects[KEY])
    assert not said
    assert verbs(kube) == ["POST ", f"GET /{lease.NAME}", f"PUT /{lease.NAME}", f"DELETE /{lease.NAME}"]
    put = kube.sent[2][2]
    assert put["metadata"]["resourceVersion"] == dead["resourceVersion"]
    assert put["spec"]["holderIdentity"] == ME
    assert lease._age(put["spec"]["acquireTime"]) < 5
    assert taken["metadata"]["uid"] == dead["uid"]  # the same object, updated
    assert kube.sent[3][2]["preconditions"] == {
        "uid": dead["uid"],
        "resourceVersion": taken["metadata"]["resourceVersion"],
    }
    assert KEY not in api.objects


def test_a_takeover_another_run_wins_first_is_a_lease_held_by_that_run():
    api = cluster(holder="dead@host pid 9", renewed=61)

    def the_other_run_takes_it_over(method, path, body):
        if method == "PUT":
            current = api.objects[KEY]
            api.store(KEY, other("fast@host pid 7", 0) | {"metadata": current["metadata"]}, current)

    kube = Recording(api, the_other_run_takes_it_over)
    with pytest.raises(lease.LeaseHeldError, match="fast@host pid 7"), lease.held(kube, "llm-stack", holder=ME, wait=0):
        pytest.fail("two runs took the lease over")
    assert verbs(kube) == ["POST ", f"GET /{lease.NAME}", f"PUT /{lease.NAME}", f"GET /{lease.NAME}"]
    assert api.objects[KEY]["spec"]["holderIdentity"] == "fast@host pid 7"


def test_a_lease_already_gone_at_the_end_is_fine():
    api = cluster()
    kube = Recording(api)
    with lease.held(kube, "llm-stack", holder=ME):
        del api.objects[KEY]  # e.g. the namespace purged meanwhile
    assert verbs(kube)[-1] == f"DELETE /{lease.NAME}"


@pytest.mark.parametrize("how", ["taken over", "created anew"])
def test_a_lease_another_run_holds_by_the_end_is_left_to_it(how):
    """Our Lease expired (a run stopped for over a minute) and another run took it over — the same
    object, a newer resourceVersion — or deleted it and created its own: the delete's preconditions
    fail (409) and its Lease stays."""
    api = cluster()
    kube = Recording(api)
    with lease.held(kube, "llm-stack", holder=ME):
        mine = api.objects[KEY]
        if how == "taken over":
            api.store(KEY, other("next@host pid 8", 0) | {"metadata": mine["metadata"]}, mine)
        else:
            del api.objects[KEY]
            api.store(KEY, other("next@host pid 8", 0))
    assert verbs(kube)[-1] == f"DELETE /{lease.NAME}"
    assert api.objects[KEY]["spec"]["holderIdentity"] == "next@host pid 8"


def test_any_other_answer_to_the_delete_is_raised():
    api = cluster()
    kube = Recording(api, lambda method, path, body: (422, "no") if method == "DELETE" else None)
    with pytest.raises(ApiError, match="422"), lease.held(kube, "llm-stack", holder=ME):
        pass


def test_ctrl_c_lets_the_lease_go():
    api = cluster()
    kube = Recording(api)
    with pytest.raises(KeyboardInterrupt), lease.held(kube, "llm-stack", holder=ME):
        raise KeyboardInterrupt
    assert KEY not in api.objects


def test_renewals_move_the_lease_on_and_the_delete_follows_the_last_one(monkeypatch):
    monkeypatch.setattr(lease, "DURATION", 0.3)  # a renewal every 0.1 s
    api = cluster()
    kube = Recording(api)
    with lease.held(kube, "llm-stack", holder=ME):
        first = api.objects[KEY]["spec"]["renewTime"]
        deadline = time.monotonic() + 20
        while verbs(kube).count(f"PUT /{lease.NAME}") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert api.objects[KEY]["spec"]["renewTime"] > first
    assert verbs(kube).count(f"PUT /{lease.NAME}") >= 2
    assert KEY not in api.objects  # deleted with the resourceVersion of the last renewal


def test_the_end_waits_for_a_renewal_under_way_and_deletes_what_it_wrote(monkeypatch):
    """The block ends while a renewal's update is written but not yet answered: the delete waits
    for that answer, and carries the resourceVersion it gives."""
    monkeypatch.setattr(lease, "DURATION", 0.3)
    api = cluster()
    written = threading.Event()

    def slow_answer(method, path, body):
        if method == "PUT":
            status, answer = api.answer(method, path, {}, body)
            assert status == 200
            written.set()
            time.sleep(0.3)
            return answer
        return None

    kube = Recording(api, slow_answer)
    with lease.held(kube, "llm-stack", holder=ME):
        assert written.wait(20)
    assert KEY not in api.objects


def test_a_lease_another_run_took_over_is_not_renewed(monkeypatch):
    monkeypatch.setattr(lease, "DURATION", 0.3)
    api = cluster()
    taken = []

    def taken_over_before_the_first_renewal(method, path, body):
        if method == "GET" and not taken:
            mine = api.objects[KEY]
            api.store(KEY, other("next@host pid 8", 0) | {"metadata": mine["metadata"]}, mine)
            taken.append(copy.deepcopy(api.objects[KEY]))

    kube = Recording(api, taken_over_before_the_first_renewal)
    with lease.held(kube, "llm-stack", holder=ME):
        deadline = time.monotonic() + 20
        while verbs(kube).count(f"GET /{lease.NAME}") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert f"PUT /{lease.NAME}" not in verbs(kube)
    assert api.objects[KEY] == taken[0]  # neither renewed nor deleted
