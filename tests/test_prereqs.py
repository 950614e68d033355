"""Without root (or a tool) the suite passes with skips that name their reason and fix; under CI
or --require-testbed the same skips fail. Proven by running pytest as if not root: a
sitecustomize makes os.geteuid() answer 1000 in the child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BED_TEST = "tests/testbed/test_slot.py::test_release_removes_bridge_namespaces_and_state"


@pytest.fixture
def as_non_root(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.geteuid = lambda: 1000\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "K3STACK_REQUIRE_TESTBED")}
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", *args],
            cwd=ROOT,
            env={**environ, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def test_without_root_bed_tests_skip_with_reason_and_fix(as_non_root):
    done = as_non_root(BED_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "the test bed needs root (network namespaces, mounts); fix: run the tests as root: inv test" in done.stdout


@pytest.mark.parametrize("strict", [{"K3STACK_REQUIRE_TESTBED": "1"}, {"CI": "true"}], ids=["require", "ci"])
def test_required_bed_fails_instead_of_skipping(as_non_root, strict):
    done = as_non_root(BED_TEST, **strict)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "required (CI / --require-testbed) but unavailable: the test bed needs root" in done.stdout
    assert "skipped" not in done.stdout


def test_a_missing_linter_skips_naming_inv_setup_and_fails_under_ci(monkeypatch, tmp_path):
    from tests import test_policy, test_workflows

    monkeypatch.setattr(test_policy, "CHECKOV", tmp_path / "checkov")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("K3STACK_REQUIRE_TESTBED", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"checkov not installed .*; fix: inv setup \(as root\)"):
        test_policy.require_checkov()
    with pytest.raises(pytest.skip.Exception, match=r"zizmor not installed .*; fix: inv setup"):
        test_workflows.require_tool(tmp_path / "zizmor", "zizmor")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"required .* checkov not installed"):
        test_policy.require_checkov()
