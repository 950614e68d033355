"""Ollama pieces that need no server: names, error classification, listing rows, progress output,
and reading the NDJSON stream."""

from __future__ import annotations

import io

import pytest
import urllib3

from k3stack import ollama as ol
from k3stack.console import Console
from k3stack.kube import ProxyResponse, ProxyTimeoutError


def test_names_are_normalised_like_api_tags():
    assert ol.normalise("mistral") == "mistral:latest"
    assert ol.normalise("llama3.1:8b") == "llama3.1:8b"
    assert ol.normalise("registry.example.com:5000/team/model") == "registry.example.com:5000/team/model:latest"
    assert ol.normalise(" qwen2:7b ") == "qwen2:7b"


def test_stream_errors_are_classified():
    unknown = ol._stream_error("x:1b", "pull model manifest: file does not exist")
    assert isinstance(unknown, ol.UnknownModelError)
    assert not unknown.retry
    assert "ollama.com/library" in unknown.hint
    full = ol._stream_error("x:1b", "write /root/.ollama/models/blobs/sha256-1: no space left on device")
    assert not full.retry
    transient = ol._stream_error("x:1b", "max retries exceeded: unexpected EOF")
    assert transient.retry
    assert str(transient) == "x:1b: Ollama: max retries exceeded: unexpected EOF"


def test_model_rows_mark_configured_and_missing_models():
    models = [ol.Model("llama3.1:8b", 4_920_000_000, "d", "2026-08-01T12:00:00.123Z"), ol.Model("phi3:mini", 2_200_000)]
    rows = ol.model_rows(models, ["llama3.1:8b", "mistral"])
    assert rows == [
        ["llama3.1:8b", "4.9 GB", "2026-08-01T12:00:00", "yes"],
        ["phi3:mini", "2.2 MB", "", ""],
        ["mistral:latest", "-", "-", "yes (missing)"],
    ]


def test_plain_progress_prints_phases_and_throttled_byte_counts():
    out = io.StringIO()
    console = Console(stream=out, interactive=False, plain_interval=3600)
    with console.pull_progress(["a:latest"]) as update:
        update(ol.Progress("a:latest", "pulling manifest"))
        for done in range(0, 1_000_001, 100_000):
            update(ol.Progress("a:latest", "pulling 0123456789ab", done, 1_000_000))
        update(ol.Progress("a:latest", "verifying sha256 digest", 1_000_000, 1_000_000))
        update(ol.Progress("a:latest", "success", 1_000_000, 1_000_000, done=True))
    assert out.getvalue().splitlines() == [
        "a:latest: pulling manifest",
        "a:latest: 0 B of 1.0 MB (0%)",  # then quiet until plain_interval has passed
        "a:latest: verifying sha256 digest",
        "a:latest: success",
    ]


def test_plain_progress_reports_rate_and_time_left():
    out = io.StringIO()
    console = Console(stream=out, interactive=False, plain_interval=0)
    with console.pull_progress(["a:latest"]) as update:
        update(ol.Progress("a:latest", "pulling 0123456789ab", 0, 10_000_000_000))
        update(ol.Progress("a:latest", "pulling 0123456789ab", 5_000_000_000, 10_000_000_000))
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("a:latest: 5.0 GB of 10.0 GB (50%), ")
    assert "/s, about " in last
    assert last.endswith(" left")


def test_interactive_progress_draws_bars_for_every_model():
    out = io.StringIO()
    console = Console(stream=out, interactive=True)
    with console.pull_progress(["a:latest", "b:latest"]) as update:
        update(ol.Progress("a:latest", "pulling 0123456789ab", 500_000, 1_000_000))
        update(ol.Progress("b:latest", "success", 2_000_000, 2_000_000, done=True))
    text = out.getvalue()
    assert "a:latest" in text
    assert "b:latest" in text
    assert "2.0/2.0 MB" in text


class Chunks:
    """What urllib3 hands over while a stream arrives: pieces cut anywhere, then EOF."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = list(pieces)

    def read1(self, size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def test_stream_lines_are_reassembled_across_chunks():
    raw = Chunks([b'{"status": "pull', b'ing manifest"}\n{"a":', b" 1}\n\n", b'{"status": "success"}'])
    lines = list(ProxyResponse(200, {}, raw).lines())
    assert lines == [b'{"status": "pulling manifest"}', b'{"a": 1}', b'{"status": "success"}']


def test_a_read_timeout_in_a_stream_is_a_proxy_timeout():
    class Silent:
        def read1(self, size: int) -> bytes:
            raise urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out.")

    with pytest.raises(ProxyTimeoutError, match="no data for the read timeout"):
        list(ProxyResponse(200, {}, Silent()).lines())
