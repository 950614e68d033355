"""Errors of bootstrap and its parts, in a module that imports nothing: tasks catch them to print
one clear line without paying for paramiko or cryptography when a task never needs them."""


class BootstrapError(RuntimeError):
    """Bootstrap cannot go on; the message says which host or setting and what to do."""


class RemoteError(RuntimeError):
    """A host could not be reached or a command failed; the message names the host and the fix."""


class KubeconfigError(ValueError):
    """A kubeconfig (or the API server behind it) is not usable; str() names the file, problem and fix."""
