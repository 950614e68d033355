"""No error k3stack raises leaves the person without a fix (issue #15).

Every call of K3stackError or one of its subclasses anywhere in k3stack/ is found with ast. It
passes when it gives a hint (a second argument or hint=, not an empty string), or when the text of
its message says what to do (`fix:`, `Fix:`, or kubectl-style `— <what to do>`). Anything else must
be in ALLOWED below with the reason its message still tells the person what to do (or why no
person ever sees it); an entry that no longer matches a raise site fails too, so the list stays true.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "k3stack"
SAYS_WHAT_TO_DO = re.compile(r"fix:|Fix:| — ")

# (file under k3stack/, a fragment of the message's literal text, why it needs no hint)
IMPERATIVE = "the message ends in what to do"
WRAPS = "wraps a K3stackError (or a finding) whose text carries its own fix"
INTERNAL = "internal: caught and retried or re-raised with a fix, never shown as it is"
ALLOWED: list[tuple[str, str, str]] = [
    ("bootstrap.py", "no hosts: set SERVERS", IMPERATIVE),
    ("bootstrap.py", "--host local stands alone", "says what --host local is for: the fix is to use it alone"),
    ("bootstrap.py", "embedded etcd needs an odd number (1, 3, 5)", "the fix is the odd count it names"),
    ("bootstrap.py", "is listed twice in SERVERS/AGENTS; list each host once", IMPERATIVE),
    ("bootstrap.py", "no such file; point it at your private key", IMPERATIVE),
    ("bootstrap.py", "CI must be reproducible: pin a release", IMPERATIVE),
    ("bootstrap.py", "K3s cannot change it in place: unset K3S_", IMPERATIVE),
    ("bootstrap.py", "K3s has not started on", "points at the host's K3s log"),
    ("bootstrap.py", "expected host=SHA256:<fingerprint> (ssh-keygen -lf)", "the expected form and the command"),
    ("bootstrap.py", "cannot fetch the installer", IMPERATIVE),
    ("bootstrap.py", "K3S_INSTALL_SHA256 is not set: review", IMPERATIVE),
    ("bootstrap.py", "the cluster did not become ready: ", WRAPS),
    ("backup.py", "stdin ended after", INTERNAL),
    ("backup.py", "sent nothing for", INTERNAL),
    ("deploy.py", "still there after", "the hint is in the variable part (`hint`)"),
    ("kube.py", "the connection through the service proxy broke", INTERNAL),
    ("kube.py", "no data for the read timeout", INTERNAL),
    ("kube.py", "but has no kind", INTERNAL + " (apply.py catches NotServedError)"),
    ("kube.py", "is its CRD installed?", IMPERATIVE),
    ("manifests.py", "", "RenderError(problems): each problem is `k8s/file:line: ...` naming what to correct"),
    (
        "pipeline.py",
        "",
        "RenderError(problems): render --validate lists every schema problem, each naming object and field",
    ),
    ("ollama.py", "(stalled download)", INTERNAL),
    ("ollama.py", ": ", WRAPS),
    ("remote/connection.py", "verify it on the host (ssh-keygen", IMPERATIVE),
    ("remote/connection.py", "if the host was reinstalled, verify the new", IMPERATIVE),
    ("remote/connection.py", "sshd there must offer the sftp subsystem", IMPERATIVE),
    ("remote/connection.py", "failed (exit ", "the failing command's own stderr is the detail; callers add the fix"),
    ("remote/k3s.py", "; its log ends: ", "shows the unit's log, which says what failed"),
]


def _error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """K3stackError and every class that derives from it, by name, across k3stack/."""
    bases: dict[str, set[str]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    found = {"K3stackError"}
    while grown := {name for name, parents in bases.items() if parents & found} - found:
        found |= grown
    return found


def _literal_text(node: ast.AST | None) -> str:
    """The constant string parts of an argument (an f-string's literal pieces, joined)."""
    if node is None:
        return ""
    return "".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


# Where the hint is for classes whose __init__ differs from K3stackError(what, hint).
HINT_POSITION = {"ReadError": 3}  # ReadError(source, line, what, hint)


def _hint(call: ast.Call, name: str) -> ast.AST | None:
    position = HINT_POSITION.get(name, 1)
    if len(call.args) > position:
        return call.args[position]
    return next((k.value for k in call.keywords if k.arg == "hint"), None)


def raise_sites() -> list[tuple[str, int, str, ast.Call]]:
    """(file, line, class, call) for every call of an error class in k3stack/."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}
    classes = _error_classes(trees)
    sites = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in classes:
                    sites.append((str(path.relative_to(PACKAGE)), node.lineno, name, node))
    return sites


def test_the_scan_finds_the_raise_sites():
    sites = raise_sites()
    assert len(sites) > 100
    assert {"SettingsError", "KubeconfigError", "ReadError", "BootstrapError"} <= {s[2] for s in sites}


def test_no_error_has_an_empty_fix():
    used: set[int] = set()
    missing = []
    for file, line, name, call in raise_sites():
        hint = _hint(call, name)
        if isinstance(hint, ast.Constant) and not hint.value:
            missing.append(f"k3stack/{file}:{line}: {name}(..., hint='') — an empty hint")
            continue
        message = _literal_text(call.args[HINT_POSITION.get(name, 1) - 1] if call.args else None)
        if hint is not None or SAYS_WHAT_TO_DO.search(message) or name == "SettingsError":
            continue  # SettingsError: each problem is `SETTING=value: expected ...`, the fix itself
        allowed = [i for i, (f, fragment, _) in enumerate(ALLOWED) if f == file and fragment in message]
        if allowed:
            used.add(max(allowed, key=lambda i: len(ALLOWED[i][1])))
            continue
        missing.append(f"k3stack/{file}:{line}: {name}({message[:70]!r}...) gives no fix")
    assert not missing, "errors without a fix (give a hint, or allow-list them with a reason):\n" + "\n".join(missing)
    stale = [ALLOWED[i][:2] for i in range(len(ALLOWED)) if i not in used]
    assert not stale, f"ALLOWED entries that match no raise site any more (remove them): {stale}"


def test_every_allowance_has_a_reason():
    assert all(reason.strip() for _, _, reason in ALLOWED)
