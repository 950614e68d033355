"""checkov's Kubernetes policies over the manifests `inv render --out DIR` writes: zero failures,
and every skipped check carries its reason (a `checkov.io/skipN: CKV_K8S_xx=reason` annotation on
the object in k8s/, with a comment saying why next to it).

checkov lives in its own venv (requirements-tools.txt; `inv setup` installs it). Where it is missing
these tests skip naming `inv setup`, except under CI (CI=true) or with
K3STACK_REQUIRE_TESTBED=1, where a missing checkov fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prereqs import unavailable

ROOT = Path(__file__).resolve().parents[1]
CHECKOV = ROOT / "tools" / ".venv" / "bin" / "checkov"
SETTINGS = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}


def require_checkov() -> None:
    if not CHECKOV.exists():
        unavailable(f"checkov not installed ({CHECKOV} missing)")


def checkov(directory: Path) -> dict:
    """checkov's report for one directory of manifests. --skip-download: no policy or metadata
    downloads (nothing leaves this machine); --framework kubernetes: only the manifests."""
    require_checkov()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    done = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--directory",
            str(directory),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, "LOG_LEVEL": "WARNING"},
    )
    assert done.returncode in (0, 1), f"checkov did not run ({done.returncode}): {done.stderr[-2000:]}"
    report = json.loads(done.stdout)
    if isinstance(report, list):  # one entry per framework
        (report,) = [r for r in report if r.get("check_type") == "kubernetes"]
    return report


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The objects `inv deploy` would apply, as `inv render --out DIR` writes them (secrets redacted)."""
    out = tmp_path_factory.mktemp("rendered")
    env_dir = tmp_path_factory.mktemp("env")  # no env/*.env of this machine: settings from SETTINGS
    environ = {**os.environ, **SETTINGS, "K3STACK_ENV_DIR": str(env_dir)}
    environ.pop("K3STACK_ENV", None)
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.glob("*.yaml")) == ["k3stack.yaml", "llm-stack.yaml", "monitoring.yaml"]
    return out


@pytest.fixture(scope="module")
def report(rendered) -> dict:
    return checkov(rendered)


def describe(check: dict) -> str:
    return f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"


def test_checkov_finds_no_failures(report):
    failed = report["results"]["failed_checks"]
    assert not failed, "checkov failures (fix the manifest, or skip with a true reason):\n" + "\n".join(
        map(describe, failed)
    )


def test_checkov_ran_the_kubernetes_checks(report):
    summary = report["summary"]
    assert summary["resource_count"] >= 20
    assert summary["passed"] >= 300
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    # the hardening the manifests promise, checked by checkov itself
    for check in ("CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_31", "CKV_K8S_11", "CKV_K8S_13"):
        assert check in passed, f"{check} did not run or did not pass"


def test_every_skip_is_justified(report):
    skipped = report["results"]["skipped_checks"]
    assert skipped, "expected the documented skips (see k8s/llm-stack/*.yaml annotations)"
    problems = []
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        if len(reason.split()) < 5 or reason == "No comment provided":
            problems.append(f"{describe(check)}: skipped without a reason ({reason!r})")
    assert not problems, "\n".join(problems)


def test_every_skip_annotation_has_a_comment_beside_it():
    """In k8s/, a skip annotation is preceded by a YAML comment (the human reason)."""
    problems = []
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "checkov.io/skip" in line:
                above = [row.strip() for row in lines[max(0, number - 8) : number]]
                if not any(row.startswith("#") for row in above):
                    problems.append(f"{path.relative_to(ROOT)}:{number + 1}: skip without a comment above it")
    assert not problems, "\n".join(problems)


def test_checkov_really_fails_a_bad_manifest(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  namespace: default\nspec:\n"
        "  hostNetwork: true\n  containers:\n    - name: c\n      image: busybox:latest\n"
        "      securityContext:\n        privileged: true\n"
    )
    failed = {c["check_id"] for c in checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_19"} <= failed  # privileged container, host network


def test_values_embedded_in_text_are_settings_that_cannot_break_it():
    """A ${VAR} inside a block of text (a HelmChart's valuesContent, a script) is not escaped by
    YAML: only settings whose validator refuses quotes, backslashes, spaces, newlines, `#` and `:`
    may go there, or constants k3stack computes (redis.conf and htpasswd are written by
    k3stack/secrets.py with their own rules)."""
    import re

    import yaml

    from k3stack import bootstrap, settings

    valid = settings.load(env_dir=Path("/nonexistent"), environ=SETTINGS).values
    for path in sorted((ROOT / "k8s").glob("*/*.yaml")):
        for node in _block_scalars(yaml.compose_all(path.read_text())):
            for name in re.findall(r"\$\{([A-Za-z0-9_]+)\}", node.value):
                if name == "ACME_CA_SERVER":  # bootstrap's constant: one of two Let's Encrypt URLs
                    assert all(settings.url(u) is None for u in (bootstrap.STAGING_CA, bootstrap.PRODUCTION_CA))
                    continue
                setting = settings.BY_NAME.get(name)
                assert setting is not None, f"{path.name}: ${{{name}}} in a text block is not a setting"
                assert setting.check is not None, f"{path.name}: ${{{name}}} in a text block is not validated"
                sample = valid[name]
                for char in "\"'\\ \n#:":
                    probe = sample[:1] + char + sample[1:]
                    assert setting.check(probe) is not None, f"{path.name}: ${{{name}}} may be {probe!r}"


def _block_scalars(documents):
    import yaml

    stack = [d for d in documents if d is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            yield node
