"""The README's promises that code can check: its test command is what CI runs, and its task
table lists every task and every flag each task takes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def setup_commands() -> dict[str, str]:
    """The numbered commands of the README's set-up block: {"1": "...", "2": "..."}."""
    block = README.split("## Set up", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    found, number = {}, None
    for line in block.splitlines():
        if match := re.match(r"#\s*(\d+)\.", line.strip()):
            number = match.group(1)
        elif number and line.strip():
            found[number] = line.strip()
            number = None
    return found


def test_ci_runs_exactly_the_readme_test_command():
    command = setup_commands()["2"]
    assert command.endswith("inv test"), command
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines, f".ci/run must run the README's test command as written:\n  {command}"


def test_ci_requires_every_tier():
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export .*\bCI=true\b", script, re.M)
    assert re.search(r"^export .*\bK3STACK_REQUIRE_TESTBED=1\b", script, re.M)
    assert "set -euo pipefail" in script


def test_the_main_command_uses_flags_that_exist():
    command = setup_commands()["1"]
    task = re.search(r"\binv (\S+)((?: --?\S+)*)", command)
    assert task, command
    flags = re.findall(r"--([\w-]+)", task.group(2))
    table = task_table()
    assert task.group(1) in table
    assert set(flags) <= table[task.group(1)], f"{command}: flags not in the README's table"


def task_table() -> dict[str, set[str]]:
    """{task: flags} from the README's task table (`inv NAME [--flag …]` in the first column)."""
    rows = {}
    for line in README.split("## Tasks", 1)[1].split("\n## ", 1)[0].splitlines():
        if not line.startswith("| `inv "):
            continue
        for cell in re.findall(r"`inv ([\w.]+)([^`]*)`", line.split("|")[1]):
            rows[cell[0]] = set(re.findall(r"(?<![\w-])--?(?:\[no-\]|no-)?(\w[\w-]*)", cell[1]))
    return rows


def test_the_task_table_lists_every_task_and_flag():
    from invoke import Collection
    from invoke.loader import FilesystemLoader

    module, _ = FilesystemLoader(start=str(ROOT)).load("tasks")
    collection = Collection.from_module(module)
    table = task_table()
    common = {"env", "kubeconfig", "context"}  # "every cluster task takes …" under the table
    for name in collection.task_names:
        assert name in table, f"task {name} missing from the README's task table"
        task = collection[name]
        flags = {arg.replace("_", "-") for arg in task.get_arguments() for arg in [arg.name]}
        missing = flags - table[name] - common
        assert not missing, f"inv {name}: flags {sorted(missing)} missing from the README's task table"
