"""scripts/kubeconfig_secret: one context, files inlined, base64; refuses a terminal."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import kubeconfig_secret as ks

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "ca.crt").write_bytes(b"CA-PEM")
    (tmp_path / "admin.key").write_bytes(b"KEY-PEM")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "k3stack", "cluster": {"server": "https://203.0.113.10:6443", "certificate-authority": "ca.crt"}},
            {"name": "other", "cluster": {"server": "https://198.51.100.1:6443"}},
        ],
        "users": [
            {
                "name": "k3stack",
                "user": {"client-certificate-data": "Q0VSVA==", "client-key": str(tmp_path / "admin.key")},
            },
            {"name": "other", "user": {"token": "other-token"}},
        ],
        "contexts": [
            {"name": "k3stack", "context": {"cluster": "k3stack", "user": "k3stack"}},
            {"name": "other", "context": {"cluster": "other", "user": "other"}},
        ],
        "current-context": "other",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return path


def test_exports_one_context_with_files_inlined(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert ks.main(["--kubeconfig", str(path), "--context", "k3stack"]) == 0
    exported = yaml.safe_load(base64.b64decode(out.getvalue()))
    assert [c["name"] for c in exported["clusters"]] == ["k3stack"]
    assert exported["current-context"] == "k3stack"
    assert base64.b64decode(exported["clusters"][0]["cluster"]["certificate-authority-data"]) == b"CA-PEM"
    assert base64.b64decode(exported["users"][0]["user"]["client-key-data"]) == b"KEY-PEM"
    assert "other-token" not in str(exported)


def test_problems_are_one_line_with_the_fix(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert ks.main(["--kubeconfig", str(path), "--context", "nope"]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {path}: no context named 'nope' — fix: check `kubectl config get-contexts`\n"
    )
    (tmp_path / "ca.crt").unlink()
    assert ks.main(["--kubeconfig", str(path), "--context", "k3stack"]) == 1
    assert "ca.crt: cannot read" in capsys.readouterr().err
    assert ks.main(["--kubeconfig", str(tmp_path / "absent")]) == 1


def test_each_problem_is_the_house_error_shape(tmp_path):
    """ScriptError is a K3stackError: the problem in `.what`, the fix in `.hint`, apart."""
    path = write_config(tmp_path)
    (tmp_path / "broken").write_text("clusters: [\n")
    (tmp_path / "no-current").write_text("kind: Config\n")
    (tmp_path / "ca.crt").unlink()
    problems = {
        (path, "nope"): (f"{path}: no context named 'nope'", "check `kubectl config get-contexts`"),
        (path, "k3stack"): (
            f"{tmp_path / 'ca.crt'}: cannot read (No such file or directory)",
            "the kubeconfig points at a missing file",
        ),
        (tmp_path / "absent", None): (
            f"{tmp_path / 'absent'}: cannot read (No such file or directory)",
            "pass --kubeconfig",
        ),
        (tmp_path / "broken", None): (f"{tmp_path / 'broken'}: not valid YAML", "pass the right --kubeconfig"),
        (tmp_path / "no-current", None): (f"{tmp_path / 'no-current'}: no current context", "pass --context NAME"),
    }
    for (file, context), expected in problems.items():
        with pytest.raises(ks.ScriptError) as err:
            ks.minified(file, context)
        assert (err.value.what, err.value.hint) == expected
        assert str(err.value) == f"{expected[0]} — fix: {expected[1]}"


def test_refuses_to_print_credentials_to_a_terminal(tmp_path):
    path = write_config(tmp_path)
    # `script` gives the child a real terminal as stdout.
    done = subprocess.run(
        ["script", "-qec", f"{sys.executable} -m scripts.kubeconfig_secret --kubeconfig {path}", "/dev/null"],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2
    assert "pipe it" in done.stdout + done.stderr
    assert "CA-PEM" not in done.stdout


@pytest.mark.parametrize("context", [None, "k3stack"])
def test_default_is_the_current_context(tmp_path, monkeypatch, context):
    path = write_config(tmp_path)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert ks.main(["--kubeconfig", str(path), *(["--context", context] if context else [])]) == 0
    exported = yaml.safe_load(base64.b64decode(out.getvalue()))
    assert exported["current-context"] == (context or "other")
