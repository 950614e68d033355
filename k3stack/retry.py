"""k3stack's one retry policy, on tenacity: exponential backoff with jitter, only for faults
another try can fix, each call site naming its budget.

Used by the API connection (kube.py: connection errors, 429 with Retry-After, 5xx), SSH
connects (remote/connection.py), Ollama (ollama.py: its own `transient` classification) and
the smoke checks (smoke.py: eventually-true checks until their deadline). Waiting for a state
(rollouts, node readiness, a Job's deletion) is polling, not retrying, and lives with the waiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    wait_exponential_jitter,
)


def retrying(
    transient: Callable[[BaseException], bool],
    *,
    attempts: int | None = None,
    within: float | None = None,
    first: float = 0.2,
    cap: float = 5.0,
    jitter: float | None = None,
    retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    sleep: Callable[[float], None] = time.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    """A tenacity Retrying: call it as `retrying(...)(fn, *args)`.

    transient: whether an exception is worth another try; anything else is raised at once.
    attempts: tries in all (None: no limit by count); within: seconds from the first try after
      which no new try starts (None: no limit by time). At least one of the two must be given.
    first, cap: pause n (seconds) is first·2^(n-1), at most `cap`, plus up to `jitter` seconds at
      random (default first/2) so that parallel callers do not retry in step. cap == first
      gives a steady pace (smoke's polling).
    retry_after: the pause the server asked for (HTTP Retry-After, seconds), honoured over the
      backoff when given, but never beyond `cap`.
    The last exception is raised as it is (reraise), so callers handle one error type.
    Raises ValueError when neither budget is given (a retry without end is a bug).
    """
    if attempts is None and within is None:
        raise ValueError("a retry needs a budget: attempts and/or within")
    stops = []
    if attempts is not None:
        stops.append(stop_after_attempt(max(1, attempts)))
    if within is not None:
        stops.append(stop_after_delay(within))
    backoff = wait_exponential_jitter(multiplier=first, max=cap, jitter=first / 2 if jitter is None else jitter)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after(exc) if exc is not None else None
        return min(asked, cap) if asked is not None else backoff(state)

    return Retrying(
        stop=stop_any(*stops),
        wait=wait,
        retry=retry_if_exception(transient),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
