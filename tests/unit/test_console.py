"""The one printer (k3stack/console.py): where text goes, what is redacted, what stays exact."""

from __future__ import annotations

import io
import json

from k3stack.console import Console, human_size


def console():
    out, err = io.StringIO(), io.StringIO()
    return Console(stream=out, err_stream=err, interactive=False), out, err


def test_results_go_to_stdout_problems_to_stderr():
    c, out, err = console()
    c.step("deploying")
    c.result("deployment.apps/web", "configured")
    c.error("it broke")
    c.warn("careful")
    c.note("by the way")
    assert out.getvalue() == "==> deploying\ndeployment.apps/web configured\n"
    assert err.getvalue() == "error: it broke\nwarning: careful\n==> by the way\n"


def test_every_way_out_is_redacted_but_the_document():
    c, out, err = console()
    c.add_secrets(["s3cret-value-1", "abc"])  # shorter than 4: not registered (would redact words)
    c.line("password s3cret-value-1 here, abc stays")
    c.error("failed with s3cret-value-1")
    c.json({"k": "s3cret-value-1"})
    c.table("t", ["a"], [["s3cret-value-1"]])
    assert "s3cret-value-1" not in out.getvalue() + err.getvalue()
    assert "abc stays" in out.getvalue()
    assert json.loads(out.getvalue().split("\n", 1)[1].split("\n}")[0] + "\n}") == {"k": "<redacted>"}
    c.document("kind: Secret\n")
    assert out.getvalue().endswith("kind: Secret\n")


def test_a_long_error_is_never_wrapped():
    c, _, err = console()
    long = "x" * 300 + " https://example.com/a/very/long/path"
    c.error(long)
    assert err.getvalue() == f"error: {long}\n"


def test_sizes_for_people():
    assert [human_size(n) for n in (0, 999, 1500, 4_920_000_000)] == ["0 B", "999 B", "1.5 kB", "4.9 GB"]
