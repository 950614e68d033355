"""The command line's plumbing (k3stack/face.py): flags, exit codes, what a failure prints."""

from __future__ import annotations

import io

import pytest
from invoke import Exit

from k3stack import face
from k3stack.console import Console
from k3stack.errors import K3stackError


def captured():
    out, err = io.StringIO(), io.StringIO()
    return Console(stream=out, err_stream=err, interactive=False), out, err


@pytest.mark.parametrize("value", ["x", "0", "-5", "inf", "nan", ""])
def test_a_bad_duration_is_a_usage_error(value, capsys):
    with pytest.raises(Exit) as done:
        face.seconds(value, "--timeout")
    assert done.value.code == 2
    assert f"--timeout {value}: expected a number of seconds greater than 0" in capsys.readouterr().err


def test_a_good_duration_is_seconds():
    assert face.seconds("2.5") == 2.5
    assert face.seconds(600) == 600.0


def test_smoke_groups_are_checked_before_anything_connects(capsys):
    assert face.groups("cluster, public") == ["cluster", "public"]
    assert face.groups("") == []
    with pytest.raises(Exit) as done:
        face.groups("cluster,publik")
    assert done.value.code == 2
    assert "unknown group(s) publik; choose from" in capsys.readouterr().err


def test_a_port_flag_must_be_a_number(capsys):
    with pytest.raises(Exit) as done:
        face.bootstrap_options(("a",), (), None, "ssh", False)
    assert done.value.code == 2
    assert face.bootstrap_options(("a",), ("b",), "root", "2222", True).port == 2222


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (K3stackError("DOMAIN is wrong", "set it"), 1, "error: DOMAIN is wrong — fix: set it"),
        (KeyboardInterrupt(), 130, "error: interrupted: what finished is kept; run the same command again"),
        (
            KeyError("x"),
            2,
            "error: unexpected KeyError: 'x' — this is a bug in k3stack; run again with K3STACK_DEBUG=1",
        ),
    ],
)
def test_failures_become_one_line_and_an_exit_code(raised, code, line, monkeypatch):
    monkeypatch.delenv("K3STACK_DEBUG", raising=False)
    console, out, err = captured()
    with pytest.raises(Exit) as done, face.reported(console):
        raise raised
    assert done.value.code == code
    assert err.getvalue().startswith(line)
    assert err.getvalue().count("\n") == 1
    assert out.getvalue() == ""


def test_debug_shows_the_traceback_of_a_bug(monkeypatch):
    monkeypatch.setenv("K3STACK_DEBUG", "1")
    console, _, _ = captured()
    with pytest.raises(KeyError), face.reported(console):
        raise KeyError("x")


def test_ci_is_read_here(monkeypatch):
    for value, expected in (("true", True), ("1", True), ("TRUE", True), ("false", False), ("", False)):
        monkeypatch.setenv("CI", value)
        assert face.in_ci() is expected
