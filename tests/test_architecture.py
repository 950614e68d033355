"""The house rules of issue 11, checked: a thin face, one printer, documented public API."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "k3stack"


def public_definitions(path: Path):
    """(qualified name, node) of every public function, method and class of a module."""

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_"):
                    continue
                yield f"{prefix}{child.name}", child
                if isinstance(child, ast.ClassDef):
                    yield from visit(child, f"{prefix}{child.name}.")

    yield from visit(ast.parse(path.read_text()), "")


def test_tasks_py_is_thin():
    lines = (ROOT / "tasks.py").read_text().count("\n")
    assert lines <= 250, f"tasks.py has {lines} lines: move logic into k3stack/ (pipeline.py, face.py)"


def test_only_the_console_prints():
    """The library prints through k3stack/console.py only: no print(), no rich, no raw writes to
    stdout/stderr elsewhere (so redaction and the CI/terminal choice cannot be bypassed)."""
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        if path.name == "console.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
                offenders.append(f"{path.name}:{node.lineno} print()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n == "rich" or n.startswith("rich.") for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports rich")
            is_stream = isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr")
            if is_stream and getattr(node.value, "id", "") == "sys":
                offenders.append(f"{path.name}:{node.lineno} sys.{node.attr}")
    assert offenders == []


def test_public_definitions_are_documented():
    """>= 95 % of the library's public functions, methods and classes carry a docstring."""
    missing, total = [], 0
    for path in sorted(LIBRARY.rglob("*.py")):
        for name, node in public_definitions(path):
            total += 1
            if not ast.get_docstring(node):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    covered = 1 - len(missing) / total
    assert covered >= 0.95, f"{covered:.0%} of {total} documented; missing:\n" + "\n".join(missing)


def test_the_face_is_the_only_invoke_user():
    """The library knows nothing of its command line: only k3stack/face.py imports invoke."""
    users = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n.split(".")[0] == "invoke" for n in names):
                    users.append(path.name)
    assert sorted(set(users)) == ["face.py"]


def _docstrings(tree) -> set[int]:
    """ids of the Constant nodes that are module, class or function docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_messages_name_tasks_through_one_function():
    """The library's messages spell a task through errors.command(), never as a literal `inv …`:
    the front end's name lives in one place (errors.PROGRAM). Docstrings may say `inv deploy`."""
    import re

    literal = re.compile(r"\binv [a-z]")
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.name == "face.py":  # the face is the command line
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            is_message = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            if is_message and literal.search(node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value[:70]!r}")
    assert offenders == [], "use errors.command('TASK'):\n" + "\n".join(offenders)


def test_only_the_face_reads_ci_and_the_step_summary():
    """CI and GITHUB_STEP_SUMMARY are the front end's business: the face (and the console, which
    renders plain lines in CI) read them and hand the library plain flags."""
    readers = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.name in ("face.py", "console.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("CI", "GITHUB_STEP_SUMMARY"):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert readers == []
