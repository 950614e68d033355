"""Every workflow step fails when its command fails — checked by running the steps.

GitHub runs a `run:` script as a file under the step's shell: `bash --noprofile --norc -eo pipefail
{0}` for `shell: bash`, but `bash -e {0}` when no shell is given (job or workflow `defaults` aside):
without pipefail, `inv deploy | tee log` exits 0 when deploy fails. So:

- statically, every job with run steps must get a pipefail shell (`defaults: run: shell: bash`);
- dynamically, each job's run steps are executed in order, the runner's way (the script in a file,
  the effective shell's command line, workflow + job + step env, GITHUB_ENV carried to the next
  steps), in a temporary workspace with ONLY stubs on PATH: every program a step calls is a stub
  that logs its call and exits 0 — or 73 for the one call under test. For every call of every
  program, the step is run again with that call failing, and it must exit 73. Nothing real runs
  (mkdir alone acts, inside the temporary directory), nothing touches the network.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_workflows import WORKFLOWS, commands, load, program, script_lines

BASH = shutil.which("bash") or "/bin/bash"
SH = shutil.which("sh") or "/bin/sh"
FAIL = 73  # the failing stub's exit status: a step that exits with it failed because of that call

# The runner's command line per `shell:` (docs: "jobs.<job_id>.steps[*].shell"); None = not set.
SHELLS = {
    None: [BASH, "-e", "{0}"],
    "bash": [BASH, "--noprofile", "--norc", "-eo", "pipefail", "{0}"],
    "sh": [SH, "-e", "{0}"],
}
# bash builtins and keywords the scripts use: never stubbed (they are the shell itself).
BUILTINS = {".", "source", "echo", "printf", "umask", "exit", "continue", "break", "true", "false", "read"}
BUILTINS |= {"test", "[", "[[", "cd", "export", "set", "shift", "return", "local", ":"}
# Wrappers run what follows them (found on PATH: a stub again).
WRAPPERS = {
    "sudo": 'while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done\n',
    "env": 'while [ $# -gt 0 ] && { [ "${1#-}" != "$1" ] || [ "${1#*=}" != "$1" ]; }; do\n'
    '  if [ "${1#*=}" != "$1" ]; then export "${1?}"; fi; shift\ndone\n',
}
# A stub: counts and logs its calls, fails the one named by STUB_FAIL (name#n), prints
# $STUB_OUT.<name> if that file exists, else nothing.
STUB = """\
calls=$STUB_LOG.@NAME@; n=0
if [ -f "$calls" ]; then read -r n < "$calls"; fi
n=$((n + 1)); echo "$n" > "$calls"; echo "@NAME@#$n $*" >> "$STUB_LOG"
if [ "$STUB_FAIL" = "@NAME@#$n" ]; then exit @FAIL@; fi
if [ -f "$STUB_OUT.@NAME@" ]; then while IFS= read -r line; do echo "$line"; done < "$STUB_OUT.@NAME@"; fi
"""
MKDIR = """\
for a in "$@"; do case "$a" in -*|"$STUB_ROOT"/*) ;; /*) exit 99 ;; esac; done
exec @REAL@ "$@"
"""
# Calls whose failure a step handles on purpose: {(workflow, job, program): why}.
# `program` covers all its calls in that job, `program#n` the n-th call of a step.
TOLERATED = {
    ("deploy.yml", "deploy", "grep"): "grep -q decides between a raw and a base64 kubeconfig; "
    "the masking grep may match nothing (`|| true`)",
    ("deploy.yml", "plan", "git#3"): "`if git diff --quiet`: differences (1) and errors alike mean deploy",
}


def effective_shell(workflow: dict, job: dict, step: dict) -> str | None:
    """The shell a run step gets: its own, else the job's defaults, else the workflow's."""
    for source in (
        step,
        (job.get("defaults") or {}).get("run") or {},
        (workflow.get("defaults") or {}).get("run") or {},
    ):
        if source.get("shell"):
            return source["shell"]
    return None


def shell_argv(shell: str | None, script: Path) -> list[str]:
    template = SHELLS.get(shell) or shlex.split(shell)
    argv = [str(script) if word == "{0}" else word.replace("{0}", str(script)) for word in template]
    return [BASH if argv[0] == "bash" else SH if argv[0] == "sh" else argv[0], *argv[1:]]


def has_pipefail(shell: str | None) -> bool:
    argv = SHELLS.get(shell) or shlex.split(shell or "")
    return shell == "bash" or (
        Path(argv[0]).name == "bash"
        and any(re.fullmatch(r"-[a-z]*o", a) and b == "pipefail" for a, b in itertools.pairwise(argv))
    )


def jobs_with_run_steps():
    for path in WORKFLOWS:
        workflow = load(path)
        for job_id, job in workflow["jobs"].items():
            if any("run" in step for step in job.get("steps", [])):
                yield pytest.param(path, job_id, id=f"{path.name}:{job_id}")


# --- statically: the shell every run step gets ------------------------------------------------------


@pytest.mark.parametrize(("path", "job_id"), list(jobs_with_run_steps()))
def test_every_run_step_gets_a_shell_with_pipefail(path, job_id):
    workflow = load(path)
    job = workflow["jobs"][job_id]
    for step in job["steps"]:
        if "run" in step:
            shell = effective_shell(workflow, job, step)
            assert has_pipefail(shell), (
                f"{path.name}: job {job_id}, step {step.get('name')!r} runs under "
                f"`{' '.join(SHELLS.get(shell) or [str(shell)])}` (no pipefail): a failing command piped "
                "into another passes; set `defaults: run: shell: bash` on the workflow or the job"
            )


def test_has_pipefail_reads_shell_templates():
    assert has_pipefail("bash")
    assert has_pipefail("bash --noprofile --norc -eo pipefail {0}")
    assert has_pipefail("bash -o pipefail -e {0}")
    assert not has_pipefail(None)
    assert not has_pipefail("bash -e {0}")
    assert not has_pipefail("sh")


# --- dynamically: the steps run against stubs ------------------------------------------------------


class Runner:
    """One job's run steps, run in order the way the runner does, against stubs only."""

    def __init__(self, root: Path, workflow: dict, job_id: str, variant: dict[str, str]):
        self.root, self.job_id = root, job_id
        self.workflow = workflow
        self.job = workflow["jobs"][job_id]
        self.variant = variant
        self.bin, self.ws, self.temp, self.home = (root / d for d in ("bin", "ws", "temp", "home"))
        for d in (self.bin, self.ws, self.temp, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.files = {
            k: root / k.lower() for k in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_PATH")
        }
        self.github_env: dict[str, str] = {}

    # expressions: the values a run would have, or placeholders
    def value(self, name: str, raw) -> str:
        text = str(raw)
        if name in self.variant:
            return self.variant[name]
        text = text.replace("${{ runner.temp }}", str(self.temp)).replace("${{ github.workspace }}", str(self.ws))
        text = text.replace("${{ github.event_name }}", "workflow_run")
        text = re.sub(r"\$\{\{\s*secrets\.\w+\s*\}\}", "stub-secret", text)
        return re.sub(r"\$\{\{.*?\}\}", "stub", text)

    def stub(self, name: str, where: Path | None = None) -> None:
        target = where or self.bin / name
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        body = WRAPPERS.get(name, "")
        if name in WRAPPERS:
            body += 'if [ $# -gt 0 ]; then exec "$@"; fi\nexit 0\n'
        else:
            real = shutil.which(name) if name == "mkdir" else None
            body = STUB.replace("@NAME@", name).replace("@FAIL@", str(FAIL))
            # mkdir acts (only below the test's directory): later steps write into what it made
            body += MKDIR.replace("@REAL@", real) if real else "exit 0\n"
        target.write_text(f"#!{BASH}\n{body}")
        target.chmod(0o755)

    def prepare(self, script: str) -> None:
        for line in script_lines(script):
            for words in commands(line):
                name, args = program(words)
                for wrapper in WRAPPERS:
                    if wrapper in (Path(w).name for w in words[:1]):
                        self.stub(wrapper)
                if not name or name in BUILTINS:
                    if name in (".", "source") and args and not args[0].startswith(("$", "/")):
                        (self.ws / args[0]).parent.mkdir(parents=True, exist_ok=True)
                        (self.ws / args[0]).touch()  # what `python3 -m venv .venv` would have made
                    continue
                first = next((w for w in words if Path(w).name == name), name)
                if "/" in first and not first.startswith(("$", "/")):
                    self.stub(name, self.ws / first)  # e.g. tools/.venv/bin/pip
                self.stub(name)

    def env(self, step: dict, fail: str) -> dict[str, str]:
        base = {
            "PATH": str(self.bin),
            "HOME": str(self.home),
            "RUNNER_TEMP": str(self.temp),
            "GITHUB_WORKSPACE": str(self.ws),
            "GITHUB_SHA": "0" * 40,
            "GITHUB_REPOSITORY": "owner/k3stack",
            "GITHUB_REF_NAME": "main",
            "GITHUB_ACTIONS": "true",
            "CI": "true",
            "RUNNER_OS": "Linux",
            **{k: str(v) for k, v in self.files.items()},
            "STUB_LOG": str(self.root / "calls.log"),
            "STUB_OUT": str(self.root / "out"),
            "STUB_ROOT": str(self.root),
            "STUB_FAIL": fail,
        }
        for source in (self.workflow.get("env") or {}, self.job.get("env") or {}):
            base.update({k: self.value(k, v) for k, v in source.items()})
        base.update(self.github_env)
        base.update({k: self.value(k, v) for k, v in (step.get("env") or {}).items()})
        return base

    def run(self, step: dict, number: int, fail: str = "") -> tuple[int, str]:
        script = self.root / f"step-{number}.sh"
        script.write_text(step["run"])
        shell = effective_shell(self.workflow, self.job, step)
        done = subprocess.run(
            shell_argv(shell, script),
            cwd=self.ws,
            env=self.env(step, fail),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.returncode, done.stdout + done.stderr

    def read_github_env(self) -> None:
        env_file = self.files["GITHUB_ENV"]
        if env_file.exists():
            for line in env_file.read_text().splitlines():
                if "=" in line:
                    key, _, value = line.partition("=")
                    self.github_env[key] = value


def variants(job: dict) -> list[dict[str, str]]:
    """Each combination of the job's `${{ cond && 'a' || 'b' }}` env values (dry run or not, ...)."""
    choices = {}
    for name, raw in (job.get("env") or {}).items():
        if match := re.fullmatch(r"\$\{\{.*&&\s*'([^']*)'\s*\|\|\s*'([^']*)'\s*\}\}", str(raw).strip()):
            choices[name] = match.groups()
    return [dict(zip(choices, combo, strict=True)) for combo in itertools.product(*choices.values())] or [{}]


def exercise(tmp_path: Path, path: Path, job_id: str) -> tuple[list[str], list[str]]:
    """Run the job's steps; for every call a step makes, run it again with that call failing.
    Returns (problems, the calls that were made to fail)."""
    problems, tried = [], []
    workflow = load(path)
    job = workflow["jobs"][job_id]
    for v, variant in enumerate(variants(job)):
        runner = Runner(tmp_path / f"v{v}", workflow, job_id, variant)
        # what a few stubs print, so that the calls after them are reached: `git rev-parse HEAD` the
        # commit asked for (the placeholder "stub"), the python one-liner listing settings one name
        (runner.root / "out.git").write_text("stub\n")
        (runner.root / "out.python").write_text("DOMAIN\n")
        run_steps = [s for s in job["steps"] if "run" in s]
        for number, step in enumerate(run_steps):
            runner.prepare(step["run"])
            log = Path(runner.env(step, "")["STUB_LOG"])
            for counter in runner.root.glob("calls.log*"):
                counter.unlink()
            _, output = runner.run(step, number)  # every call succeeds: which calls does this step make?
            if "command not found" in output:  # a program the stubs missed: the run would prove nothing
                problems.append(f"{path.name}: job {job_id}, step {step.get('name')!r}: not stubbed:\n{output}")
            calls = [line.split(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []
            state = {p: p.read_bytes() for p in runner.files.values() if p.exists()}
            if "failure()" in str(step.get("if", "")):
                # runs only after a failure, to collect diagnostics: best effort by design
                runner.read_github_env()
                continue
            for call in calls:
                name = call.split("#")[0]
                if name in WRAPPERS or {(path.name, job_id, name), (path.name, job_id, call)} & set(TOLERATED):
                    continue
                for counter in runner.root.glob("calls.log*"):
                    counter.unlink()
                status, output = runner.run(step, number, fail=call)
                tried.append(f"{path.name}:{job_id}:{step.get('name')}:{call}:{variant}")
                if status != FAIL:
                    problems.append(
                        f"{path.name}: job {job_id}, step {step.get('name')!r} {variant or ''}: with call {call} "
                        f"failing (exit {FAIL}) the step exited {status}\n{output[-800:]}"
                    )
            for p in runner.files.values():  # the failing runs' writes do not count
                if p in state:
                    p.write_bytes(state[p])
                elif p.exists():
                    p.unlink()
            for counter in runner.root.glob("calls.log*"):
                counter.unlink()
            runner.run(step, number)  # the step's success, for the steps after it
            runner.read_github_env()
    return problems, tried


@pytest.mark.parametrize(("path", "job_id"), list(jobs_with_run_steps()))
def test_a_failing_command_fails_its_step(tmp_path, path, job_id):
    problems, tried = exercise(tmp_path, path, job_id)
    assert tried, f"{path.name}: job {job_id}: no call was exercised"
    assert not problems, "\n\n".join(problems)


def test_deploy_fails_when_inv_deploy_fails(tmp_path):
    """The case issue 18 found: `inv deploy … | tee` must fail the Deploy step, dry run or not."""
    path = next(p for p in WORKFLOWS if p.name == "deploy.yml")
    problems, tried = exercise(tmp_path, path, "deploy")
    deploys = [t for t in tried if ":Deploy (inv deploy):inv#1:" in t]
    assert {"'DRY_RUN': 'true'" in t for t in deploys} == {True, False}, deploys
    assert not [p for p in problems if "'Deploy (inv deploy)'" in p], "\n".join(problems)


def test_the_harness_sees_what_the_default_shell_hides(tmp_path):
    """Control: the same piped script passes under the runner's default `bash -e` and fails under
    `shell: bash` — so a pipefail-less workflow would fail test_a_failing_command_fails_its_step."""
    step = {"name": "deploy", "run": 'inv deploy --json | tee "$RUNNER_TEMP/deploy.json"\n'}
    results = {}
    for shell in (None, "bash"):
        job = {"runs-on": "x", "steps": [{**step, **({"shell": shell} if shell else {})}]}
        runner = Runner(tmp_path / str(shell), {"on": "push", "jobs": {"j": job}}, "j", {})
        runner.prepare(step["run"])
        results[shell] = runner.run(runner.job["steps"][0], 0, fail="inv#1")[0]
    assert results == {None: 0, "bash": FAIL}
