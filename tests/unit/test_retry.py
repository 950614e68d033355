"""The one retry policy (k3stack/retry.py) and what each caller counts as transient."""

import errno

import pytest
import urllib3

from k3stack import retry
from k3stack.kube import ApiError, transient


class FlakyError(Exception):
    pass


def failing(times, exc=FlakyError):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise exc("boom")
        return "ok"

    return call, calls


def test_transient_failures_are_retried_with_growing_jittered_pauses():
    pauses: list[float] = []
    call, calls = failing(4)
    policy = retry.retrying(lambda e: isinstance(e, FlakyError), attempts=5, first=1.0, cap=100, sleep=pauses.append)
    assert policy(call) == "ok"
    assert len(calls) == 5
    for n, pause in enumerate(pauses):
        assert 2**n <= pause <= 2**n + 0.5  # first·2^n plus up to first/2 at random
    assert any(pause > 2**n for n, pause in enumerate(pauses))


def test_the_budget_ends_it_and_the_last_error_is_raised_as_it_is():
    pauses: list[float] = []
    call, calls = failing(10)
    with pytest.raises(FlakyError):
        retry.retrying(lambda e: True, attempts=3, sleep=pauses.append)(call)
    assert (len(calls), len(pauses)) == (3, 2)


def test_a_final_error_is_not_retried():
    call, calls = failing(1, KeyError)  # a bug in the caller is never a reason to try again
    with pytest.raises(KeyError):
        retry.retrying(lambda e: isinstance(e, FlakyError), attempts=5, sleep=lambda s: None)(call)
    assert len(calls) == 1


def test_pauses_are_capped_and_retry_after_is_honoured_within_the_cap():
    pauses: list[float] = []
    call, _ = failing(6)
    retry.retrying(lambda e: True, attempts=7, first=1.0, cap=3.0, sleep=pauses.append)(call)
    assert max(pauses) == 3.0
    asked: list[float] = []
    call, _ = failing(2)
    retry.retrying(lambda e: True, attempts=3, cap=10, retry_after=lambda e: 7.0, sleep=asked.append)(call)
    assert asked == [7.0, 7.0]
    capped: list[float] = []
    call, _ = failing(1)
    retry.retrying(lambda e: True, attempts=3, cap=2, retry_after=lambda e: 60.0, sleep=capped.append)(call)
    assert capped == [2.0]


def test_a_time_budget_stops_new_tries():
    call, calls = failing(1000)
    with pytest.raises(FlakyError):
        retry.retrying(lambda e: True, within=0.3, first=0.05, cap=0.05)(call)
    assert 2 <= len(calls) < 20


def test_a_retry_without_a_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        retry.retrying(lambda e: True)


def api(status, retry_after=None):
    return ApiError(status, {"message": "m"}, "GET", "/x", retry_after=retry_after)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_the_api_server_overloaded_or_failing_is_transient(status):
    assert transient(api(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_client_errors_are_final_409_conflict_included(status):
    assert not transient(api(status))


def test_connection_failures_are_transient_and_other_exceptions_final():
    assert transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert transient(urllib3.exceptions.ProtocolError("connection aborted"))
    assert transient(TimeoutError())
    assert not transient(KeyError("x"))
    assert not transient(ValueError("x"))


def test_retry_after_is_read_as_delta_seconds():
    assert api(503, " 3 ").retry_after == 3.0
    assert api(503, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after is None
    assert api(503).retry_after is None


def test_retrying_is_done_in_one_place():
    """No hand-written retry loop: tenacity's Retrying is built only in k3stack/retry.py, and no
    module sleeps inside an exception handler (the shape every hand-made retry loop has)."""
    import ast
    from pathlib import Path

    root = Path(retry.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if path.name != "retry.py" and isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Retrying":
                offenders.append(f"{path.name}:{node.lineno} builds its own Retrying")
            if isinstance(node, ast.ExceptHandler):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Call) and getattr(inner.func, "attr", "") == "sleep":
                        offenders.append(f"{path.name}:{inner.lineno} sleeps in an except block")
    assert offenders == []


def test_the_default_pace_starts_at_a_fifth_of_a_second_doubles_and_stops_at_five():
    pauses: list[float] = []
    call, _ = failing(9)
    retry.retrying(lambda e: True, attempts=10, sleep=pauses.append)(call)
    for n, pause in enumerate(pauses[:5]):  # 0.2·2^n plus up to 0.1 (first/2) at random
        assert 0.2 * 2**n <= pause <= 0.2 * 2**n + 0.1
    assert pauses[5:] == [5.0] * 4  # 0.2·2^5 = 6.4 is over the cap


def test_the_default_jitter_is_half_the_first_pause_and_an_explicit_one_is_used_as_given():
    pauses: list[float] = []
    for _ in range(100):
        call, _ = failing(1)
        retry.retrying(lambda e: True, attempts=2, first=1.0, sleep=pauses.append)(call)
    assert all(1.0 <= p <= 1.5 for p in pauses)
    assert max(pauses) > 1.4  # jitter there, and up to first/2 (100 draws all under 1.4: odds 0.8^100, 2e-10)
    steady: list[float] = []
    call, _ = failing(3)
    retry.retrying(lambda e: True, attempts=4, first=1.0, cap=100, jitter=0, sleep=steady.append)(call)
    assert steady == [1.0, 2.0, 4.0]


def test_at_least_one_try_and_every_pause_announced_before_it_is_taken():
    call, calls = failing(5)
    with pytest.raises(FlakyError):
        retry.retrying(lambda e: True, attempts=0, sleep=lambda s: None)(call)
    assert len(calls) == 1
    announced: list[int] = []
    call, calls = failing(2)
    retry.retrying(
        lambda e: True,
        attempts=5,
        sleep=lambda s: None,
        before_sleep=lambda state: announced.append(state.attempt_number),
    )(call)
    assert (announced, len(calls)) == ([1, 2], 3)


def test_retry_after_none_falls_back_to_the_backoff_and_sees_the_exception():
    seen: list[BaseException] = []
    pauses: list[float] = []

    def asked(exc):
        seen.append(exc)
        return None

    call, _ = failing(2)
    retry.retrying(lambda e: True, attempts=3, first=1.0, jitter=0, retry_after=asked, sleep=pauses.append)(call)
    assert pauses == [1.0, 2.0]
    assert [str(e) for e in seen] == ["boom", "boom"]
    assert all(isinstance(e, FlakyError) for e in seen)


def test_the_refusal_says_what_a_budget_is():
    with pytest.raises(ValueError, match=r"^a retry needs a budget: attempts and/or within$"):
        retry.retrying(lambda e: True, first=1.0)
    call, calls = failing(1)
    assert retry.retrying(lambda e: True, within=5, sleep=lambda s: None)(call) == "ok"  # a time budget alone
    assert len(calls) == 2
