"""Every expected failure of k3stack is a K3stackError (what + fix): the tasks report exactly
that base as one line and exit 1; anything else is a bug (exit 2, tests/test_tasks.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import k3stack
from k3stack.errors import K3stackError

# Exceptions that are not failures of k3stack, each with its reason.
NOT_FAILURES = {
    "k3stack.smoke.CheckFailed": "a check's verdict, recorded in the smoke report, never raised to the tasks",
}


def k3stack_exceptions() -> dict[str, type]:
    found = {}
    for module_info in pkgutil.walk_packages(k3stack.__path__, "k3stack."):
        module = importlib.import_module(module_info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_error_class_is_under_the_one_base():
    exceptions = k3stack_exceptions()
    assert len(exceptions) >= 10  # the walk found the library's errors
    outside = sorted(name for name, cls in exceptions.items() if not issubclass(cls, K3stackError))
    assert outside == sorted(NOT_FAILURES), f"not under K3stackError: {sorted(set(outside) - set(NOT_FAILURES))}"


def test_what_and_hint_make_one_line():
    error = K3stackError("root@h: SSH login refused", "check SSH_KEY")
    assert str(error) == "root@h: SSH login refused — fix: check SSH_KEY"
    assert (error.what, error.hint) == ("root@h: SSH login refused", "check SSH_KEY")
    assert str(K3stackError("settings: 2 problems")) == "settings: 2 problems"
