"""Errors of bootstrap and its parts, in a module that imports nothing: tasks catch them to print
one clear line without paying for paramiko or cryptography when a task never needs them."""


class K3stackError(RuntimeError):
    """An expected failure, for a person: `what` went wrong (naming the host, setting or file)
    and `hint`, the fix. str() is `<what> — fix: <hint>` (just `what` when the message already
    says what to do). Every expected failure of k3stack is one (tests/unit/test_errors.py)."""

    def __init__(self, what: str, hint: str = ""):
        self.what, self.hint = what, hint
        super().__init__(f"{what} — fix: {hint}" if hint else what)


class BootstrapError(K3stackError):
    """Bootstrap cannot go on; the message says which host or setting and what to do."""


class RemoteError(K3stackError):
    """A host could not be reached or a command failed; the message names the host and the fix."""


class KubeconfigError(K3stackError, ValueError):
    """A kubeconfig (or the API server behind it) is not usable; str() names the file, problem and fix."""


PROGRAM = "inv"  # the front end that runs k3stack's tasks (tasks.py through Invoke); scripts/ point at it too


def command(task: str) -> str:
    """How a person runs `task` (a task name and its arguments, e.g. "restore ARCHIVE"), quoted as
    code for a hint: command("deploy") == "`inv deploy`". The library's messages name tasks through
    this one function, so the front end's spelling lives in one place (PROGRAM)."""
    return f"`{PROGRAM} {task}`"
