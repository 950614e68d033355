"""Ollama pieces that need no server: names, error classification, listing rows, progress output,
and reading the NDJSON stream."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time

import pytest
import urllib3

from k3stack import ollama as ol
from k3stack.console import Console
from k3stack.kube import ProxyResponse, ProxyTimeoutError
from tests.testbed import fake_ollama

PART80 = "8" * 80
PART350 = "3" * 350

# Ollama's own table (types/model/name_test.go) plus the forms k3stack's users write. Valid means
# Ollama's ParseName(name).IsValid(): missing parts take the defaults.
VALID = [
    "mistral",
    "llama3.1:8b",
    "Mistral:7B",  # upper case is allowed
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K",
    "library/mistral:7b",
    "scheme://host:port/namespace/model:tag",
    "host:port/namespace/model",
    "registry.example.com:5000/team/model",
    "_why/_the/_lucky:_stiff",
    "h/n/m:t",
    "host:https/namespace/model:tag",
    f"{PART80}/{PART80}/{PART80}:{PART80}",
    f"{PART350}/{PART80}/{PART80}:{PART80}",
]
INVALID = [
    "",
    "^",
    "mm:",
    "/nn/mm",
    "//",
    "//mm",
    "hh//",
    "@t",
    "m@d",
    "-hh/nn/mm:tt",
    "hh/-nn/mm:tt",
    "hh/nn/-mm:tt",
    "hh/nn/mm:-tt",
    "host/name:space/model:tag",
    "llama3.1:8b:q4",  # the tag is what follows the last colon: the model part has one
    "hf.co/Llama-3.2-1B-GGUF",  # two parts: hf.co would be the namespace, which has no dots
    "a/b/c/d",  # one part too many
    "bad name",
    f"{PART80}8",
    f"{PART350}3/{PART80}/{PART80}:{PART80}",
]


@pytest.mark.parametrize("name", VALID)
def test_ollamas_grammar_accepts(name):
    assert ol.name_problem(name) is None


@pytest.mark.parametrize("name", INVALID)
def test_ollamas_grammar_refuses(name):
    assert ol.name_problem(name)


def test_a_refused_name_says_which_part_is_wrong():
    assert ol.name_problem("hf.co/repo") == "the namespace 'hf.co' may not contain '.'"
    assert ol.name_problem("mistral:") == "the tag is empty"
    assert ol.name_problem("-x") == "the model '-x' must start with a letter, a digit or _"


def test_names_are_normalised_like_api_tags():
    assert ol.normalise("mistral") == "mistral:latest"
    assert ol.normalise("llama3.1:8b") == "llama3.1:8b"
    assert ol.normalise("registry.ollama.ai/library/mistral:7b") == "mistral:7b"
    assert ol.normalise("library/mistral:7b") == "mistral:7b"
    assert ol.normalise("REGISTRY.ollama.ai/Library/mistral") == "mistral:latest"
    assert ol.normalise("registry.ollama.ai/bob/model") == "bob/model:latest"
    assert ol.normalise("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == (
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
    )
    assert ol.normalise("https://hf.co/org/repo") == "hf.co/org/repo:latest"
    assert ol.normalise("registry.example.com:5000/team/model") == "registry.example.com:5000/team/model:latest"
    assert ol.normalise(" qwen2:7b ") == "qwen2:7b"
    assert ol.normalise("not a name") == "not a name:latest"  # never raises (smoke normalises listings)


def test_names_are_one_model_whatever_their_case_and_form():
    assert ol.model_key("Mistral:7B") == ol.model_key("registry.ollama.ai/library/mistral:7b") == "mistral:7b"
    assert ol.model_key("tinyllama") == ol.model_key("library/TinyLlama:latest")
    assert ol.model_key("bob/model") != ol.model_key("model")
    listed = ["mistral:7b", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "tinyllama:latest"]
    wanted = ["registry.ollama.ai/library/Mistral:7b", "tinyllama", "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m"]
    assert ol.missing_models(wanted, listed) == []
    assert ol.missing_models(["llama3.1", "mistral:7b", "llama3.1:latest"], listed) == ["llama3.1:latest"]


@pytest.mark.parametrize("name", VALID + INVALID + ["tinyllama", "Library/X:Y", "a.b:1/c/d:e", "https://x/y/z"])
def test_the_test_ollama_reads_names_as_k3stack_does(name):
    # The test Ollama has its own copy of Ollama's grammar: the two must agree, or a test would
    # pass against a server that accepts what the real one refuses.
    from tests.testbed import fake_ollama

    assert (fake_ollama.parse(name) is not None) == (ol.name_problem(name) is None)
    if ol.name_problem(name) is None:
        assert fake_ollama.shortest(name) == ol.normalise(name)


def test_settings_check_model_names_with_ollamas_grammar():
    from k3stack import settings

    assert settings.models("llama3.1:8b, hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M,Mistral:7B") is None
    assert "(not hf.co/repo, bad name)" in settings.models("mistral,hf.co/repo,bad name")


# -- what is worth another try ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "status", "again"),
    [
        # final: Ollama's words, whatever the status (some come inside its HTTP 200 stream)
        ("invalid model name", 400, False),
        ("missing request body", 400, False),
        ("this model requires MLX support, but the MLX runtime is not available", None, False),
        ("pull model manifest: file does not exist", None, False),
        ("pull model manifest: file does not exist", 500, False),
        ("write /root/.ollama/models/blobs/sha256-1: no space left on device", None, False),
        ("unauthorized: access denied", None, False),
        # final: a 4xx answer (the API server's, too: no such service, no right to proxy)
        ('services "ollama" not found', 404, False),
        ("forbidden", 403, False),
        ("bad request", 400, False),
        # worth another try
        ("max retries exceeded: unexpected EOF", None, True),
        ("digest mismatch, file must be downloaded again", None, True),
        ("cannot reach ollama:11434 (connection reset by peer)", None, True),
        ("error trying to reach service: EOF", 500, True),  # the API server, for a dropped backend connection
        ('no endpoints available for service "ollama"', 503, True),
        ("Bad Gateway", 502, True),
        ("internal error", 500, True),
        ("timeout", 408, True),
        ("slow down", 429, True),
    ],
)
def test_transient_or_final(message, status, again):
    assert ol.transient(message, status) is again


def test_stream_errors_are_classified():
    unknown = ol._stream_error("x:1b", "pull model manifest: file does not exist")
    assert isinstance(unknown, ol.UnknownModelError)
    assert not unknown.retry
    assert "ollama.com/library" in unknown.hint
    full = ol._stream_error("x:1b", "write /root/.ollama/models/blobs/sha256-1: no space left on device")
    assert not full.retry
    assert "OLLAMA_STORAGE" in full.hint
    mlx = ol._stream_error("qwen3.6:27b-nvfp4", "this model requires MLX support, but the MLX runtime is not available")
    assert not mlx.retry
    assert "GGUF tag" in mlx.hint
    transient = ol._stream_error("x:1b", "max retries exceeded: unexpected EOF")
    assert transient.retry
    assert str(transient) == "x:1b: Ollama: max retries exceeded: unexpected EOF"


def test_the_retry_policy_backs_off_exponentially_with_jitter():
    pauses: list[float] = []
    calls = []

    def flaky():
        calls.append(1)
        raise ol.OllamaError("x: HTTP 503", retry=True)

    with pytest.raises(ol.OllamaError, match="HTTP 503"):
        ol.retry_policy(5, 1.0, pauses.append)(flaky)
    assert len(calls) == 5
    assert len(pauses) == 4
    for n, pause in enumerate(pauses):
        assert 2**n <= pause <= 2**n + 1  # backoff·2^n, plus up to `backoff` at random
    assert any(pause > 2**n for n, pause in enumerate(pauses))  # jitter: not all at the lower bound
    capped: list[float] = []
    with pytest.raises(ol.OllamaError):
        ol.retry_policy(10, 8.0, capped.append)(flaky)
    assert max(capped) == ol.MAX_PAUSE


def test_the_retry_policy_stops_at_a_final_error():
    pauses: list[float] = []
    calls = []

    def refused():
        calls.append(1)
        raise ol._failure("x", "invalid model name", 400)

    with pytest.raises(ol.OllamaError, match="invalid model name"):
        ol.retry_policy(4, 1.0, pauses.append)(refused)
    assert (len(calls), pauses) == (1, [])


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


# -- the stall watchdog: bytes, not lines ----------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_stall_is_judged_by_bytes_not_lines():
    clock = Clock()
    watch = ol.StallWatch(10, clock)
    watch.observe("pulling manifest", 0)
    watch.observe("pulling 0123456789ab", 1000)
    for _ in range(200):  # Ollama repeats the line every 60 ms while no byte arrives
        clock.now += 0.06
        watch.observe("pulling 0123456789ab", 1000)
    assert watch.stalled()  # 12 s of lines, not one new byte


def test_new_bytes_keep_a_slow_download_alive():
    clock = Clock()
    watch = ol.StallWatch(10, clock)
    for n in range(30):
        clock.now += 9
        watch.observe("pulling 0123456789ab", n)  # one byte every 9 s: slow, not stalled
        assert not watch.stalled()
    clock.now += 10.5
    assert watch.stalled()  # silence counts too


def test_a_new_layer_without_bytes_is_no_progress():
    clock = Clock()
    watch = ol.StallWatch(10, clock)
    watch.observe("pulling aaaaaaaaaaaa", 5000)
    clock.now += 6
    watch.observe("pulling bbbbbbbbbbbb", 5000)  # the next layer's first line: no `completed` yet
    clock.now += 6
    assert watch.stalled()


def test_verifying_and_writing_are_not_stalls():
    clock = Clock()
    watch = ol.StallWatch(10, clock)
    watch.observe("pulling 0123456789ab", 1000)
    clock.now += 9
    watch.observe("verifying sha256 digest", 1000)
    clock.now += 600  # a big model takes minutes to verify, without a line
    assert not watch.stalled()
    watch.observe("pulling manifest", 1000)  # armed again, with a fresh clock
    assert not watch.stalled()
    clock.now += 11
    assert watch.stalled()


class Repeating:
    """A pull stream through the proxy that repeats one line every few ms (Ollama while a download
    is stalled) until the connection is dropped."""

    def __init__(self, lines: list[bytes], repeat: bytes):
        self.pieces = list(lines)
        self.repeat = repeat
        self.dropped = threading.Event()
        self.sent = 0

    def read1(self, size: int) -> bytes:
        if self.dropped.is_set():
            raise OSError("connection dropped")
        time.sleep(0.005)
        self.sent += 1
        return self.pieces.pop(0) if self.pieces else self.repeat

    def shutdown(self) -> None:
        self.dropped.set()


def line(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def test_a_stream_of_repeated_lines_without_new_bytes_times_out():
    raw = Repeating(
        [line(status="pulling manifest"), line(status="pulling 0123456789ab", digest="sha256:0123", total=9000)],
        line(status="pulling 0123456789ab", digest="sha256:0123", total=9000, completed=4000),
    )
    client = ol.Ollama(None, "ns", stall_seconds=0.3)  # type: ignore[arg-type]
    events: list[ol.Progress] = []
    started = time.monotonic()
    with pytest.raises(ol.StallError, match="no new bytes for 0s"):
        client._follow("m:1", 1, ProxyResponse(200, {}, raw), events.append)
    assert time.monotonic() - started < 3
    assert raw.dropped.is_set()  # the watchdog dropped the connection
    assert raw.sent > 30  # many lines arrived: lines alone never count as progress
    assert {e.completed for e in events[2:]} == {4000}


class Moving:
    """A slow stream whose byte count grows on every line, then ends with success."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.completed = 0
        self.finished = False

    def read1(self, size: int) -> bytes:
        time.sleep(0.01)
        if self.finished:
            return b""
        if time.monotonic() > self.deadline:
            self.finished = True
            return line(status="success")
        self.completed += 1
        return line(status="pulling 0123456789ab", digest="sha256:0123", total=10**9, completed=self.completed)

    def shutdown(self) -> None:
        raise AssertionError("a moving download was dropped")


def test_a_slow_download_with_new_bytes_is_not_dropped():
    client = ol.Ollama(None, "ns", stall_seconds=0.2)  # type: ignore[arg-type]
    assert client._follow("m:1", 1, ProxyResponse(200, {}, Moving(0.8)), lambda p: None) == 10**9


def test_zero_fields_left_out_and_the_config_blob_count():
    raw = Chunks(
        [
            line(status="pulling manifest"),
            line(status="pulling aaaaaaaaaaaa", digest="sha256:aaaa", total=1000),  # no `completed` yet
            line(status="pulling aaaaaaaaaaaa", digest="sha256:aaaa", total=1000, completed=1000),
            line(status="pulling cccccccccccc", digest="sha256:cccc", total=487, completed=487),  # config blob
            line(status="verifying sha256 digest"),
            line(status="writing manifest"),
            line(status="removing unused layers"),
            line(status="couldn't remove unused layers: permission denied"),
            line(status="success"),
        ]
    )
    events: list[ol.Progress] = []
    client = ol.Ollama(None, "ns", stall_seconds=5)  # type: ignore[arg-type]
    assert client._follow("m:1", 1, ProxyResponse(200, {}, raw), events.append) == 1487
    assert [(e.completed, e.total) for e in events[:4]] == [(0, 0), (0, 1000), (1000, 1000), (1487, 1487)]
    assert events[-1].status == "success"


def test_an_error_line_on_http_200_fails_the_attempt():
    raw = Chunks([line(status="pulling manifest"), line(error="this model requires MLX support, but no")])
    client = ol.Ollama(None, "ns")  # type: ignore[arg-type]
    with pytest.raises(ol.OllamaError, match="m:1: Ollama: this model requires MLX support") as failed:
        client._follow("m:1", 1, ProxyResponse(200, {}, raw), lambda p: None)
    assert not failed.value.retry


# -- pulls against a scripted API server: what is retried, what is final --------------------------------
class Body(Chunks):
    def read(self) -> bytes:
        data = b"".join(self.pieces)
        self.pieces = []
        return data


SUCCESS = b"".join(
    [
        line(status="pulling manifest"),
        line(status="pulling aaaaaaaaaaaa", digest="sha256:aaaa", total=1000, completed=1000),
        line(status="success"),
    ]
)


class ScriptedKube:
    """Answers POST /api/pull from a script of (status, body) and GET /api/tags from `listed`."""

    def __init__(self, answers: list[tuple[int, bytes]], listed: dict[str, int]):
        self.answers = list(answers)
        self.listed = listed
        self.pulls: list[str] = []
        self.get_failures: list[tuple[int, bytes]] = []  # answered to GETs before the listing
        self.gets = 0

    def proxy(self, method, namespace, service, port, path, **options):
        self.gets += 1
        if self.get_failures:
            status, body = self.get_failures.pop(0)
            answer = ProxyResponse(status, {}, None)
            answer.body = body
            return answer
        answer = ProxyResponse(200, {}, None)
        models = [{"name": name, "size": size} for name, size in self.listed.items()]
        answer.body = json.dumps({"models": models}).encode()
        return answer

    @contextlib.contextmanager
    def proxy_stream(self, method, namespace, service, port, path, body=None, **options):
        self.pulls.append(body["model"])
        status, payload = self.answers.pop(0)
        yield ProxyResponse(status, {}, Body([payload]))


def scripted(answers, listed=None):
    kube = ScriptedKube(answers, listed if listed is not None else {"m:1": 1000})
    pauses: list[float] = []
    return ol.Ollama(kube, "ns", attempts=4, backoff=1, sleep=pauses.append), kube, pauses  # type: ignore[arg-type]


def test_a_400_is_final():
    client, kube, pauses = scripted([(400, b'{"error":"invalid model name"}')])
    result = client.pull("m:1")
    assert (result.action, result.attempts, kube.pulls, pauses) == ("failed", 1, ["m:1"], [])
    assert result.error == "m:1: HTTP 400: invalid model name"
    assert result.hint == ol.NAME_HINT


def test_an_mlx_only_model_is_final():
    mlx = line(status="pulling manifest") + line(error=fake_ollama.MLX_ERROR)
    client, _, pauses = scripted([(200, mlx)])
    result = client.pull("m:1")
    assert (result.action, result.attempts, pauses) == ("failed", 1, [])
    assert "MLX" in result.error


def test_a_5xx_from_the_proxy_is_retried_with_backoff():
    client, _, pauses = scripted([(503, b'{"message":"error trying to reach service: EOF"}'), (200, SUCCESS)])
    events: list[ol.Progress] = []
    result = client.pull("m:1", events.append)
    assert (result.action, result.attempts, result.size) == ("pulled", 2, 1000)
    assert len(pauses) == 1
    assert 1 <= pauses[0] <= 2
    assert any(e.status.startswith("retrying in ") and "HTTP 503" in e.status for e in events)


def test_names_go_to_ollama_as_written_and_are_found_by_their_listed_form():
    client, kube, _ = scripted([(200, SUCCESS)] * 4, {"Mistral:7b": 1000, "hf.co/org/repo:Q4_K_M": 5})
    report = client.pull_all(["registry.ollama.ai/library/mistral:7B", "hf.co/org/repo:q4_k_m", "m:1", "bad name"])
    assert [(r.model, r.action) for r in report.results] == [
        ("mistral:7B", "present"),
        ("hf.co/org/repo:q4_k_m", "present"),
        ("m:1", "failed"),  # pulled, but /api/tags does not list it
        ("bad name:latest", "failed"),
    ]
    assert report.results[3].error == "bad name: invalid model name (the model 'bad name' may not contain ' ')"
    # Only m:1 was asked for (4 tries: a model missing after "success" is worth another); the
    # present models and the invalid name never reached Ollama.
    assert kube.pulls == ["m:1"] * 4


def test_the_size_is_what_api_tags_lists_not_what_the_stream_showed():
    # The stream showed one 1000-byte layer; the config blob came between two ticks, unseen.
    client, _, _ = scripted([(200, SUCCESS)], {"m:1": 1487})
    result = client.pull("m:1")
    assert (result.action, result.attempts, result.size) == ("pulled", 1, 1487)


def test_a_read_that_fails_on_a_reused_connection_is_tried_again():
    client, kube, pauses = scripted([])
    kube.get_failures = [(503, b'{"message":"error trying to reach service: EOF"}')]
    assert [m.name for m in client.models()] == ["m:1"]
    assert (kube.gets, len(pauses)) == (2, 1)
    kube.get_failures = [(403, b'{"message":"forbidden"}')]
    with pytest.raises(ol.OllamaError, match="HTTP 403 forbidden"):
        client.models()  # final: not tried again
    assert (kube.gets, len(pauses)) == (3, 1)


def test_a_cancelled_client_stops_waiting_for_ollama():
    """A deploy whose rollout failed cancels its pulls: one still waiting for Ollama to answer stops."""
    kube = ScriptedKube([], {})
    kube.get_failures = [(503, b'{"message":"no endpoints available for service \\"ollama\\""}')] * 1000
    client = ol.Ollama(kube, "ns")  # type: ignore[arg-type]  # pauses wait on the cancel
    threading.Timer(0.2, client.cancel).start()
    started = time.monotonic()
    with pytest.raises(ol.OllamaError, match=r"Ollama \(service ollama:11434 in namespace ns\): cancelled"):
        client.wait_ready(timeout=60, interval=0.05)
    assert time.monotonic() - started < 5
    client.cancel()
    asked = kube.gets
    with pytest.raises(ol.OllamaError, match="cancelled"):
        client.wait_ready()
    assert kube.gets == asked  # not asked again once cancelled


class Endless:
    """A pull stream that sends a progress line every 50 ms for ever, until the connection is
    dropped (then reading it fails, as a shut-down socket does)."""

    def __init__(self):
        self.dropped = threading.Event()
        self.sent = 0

    def read1(self, size: int) -> bytes:
        if self.dropped.wait(0.05):
            raise OSError("connection shut down")
        self.sent += 1
        if self.sent > 200:  # 10 s: the interrupt did not stop it (the test fails, never hangs)
            return b""
        return line(status="pulling aaaaaaaaaaaa", digest="sha256:aaaa", total=10**9, completed=self.sent)

    def shutdown(self):
        self.dropped.set()


@pytest.mark.timeout(30)
def test_ctrl_c_stops_every_pull_at_once(request):
    """Issue 14 #7: Ctrl-C during pulls ends them within a second (not when the downloads end)."""
    # Python's Ctrl-C handler, as in a terminal: a run started as a script's background job (a
    # chroot harness) inherits SIGINT ignored, and then the SIGINT below would prove nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    streams = [Endless(), Endless()]

    class Kube(ScriptedKube):
        @contextlib.contextmanager
        def proxy_stream(self, method, namespace, service, port, path, body=None, **options):
            self.pulls.append(body["model"])
            if len(self.pulls) > len(streams):  # a retry (only after a failure): give it a stream too
                streams.append(Endless())
            yield ProxyResponse(200, {}, streams[len(self.pulls) - 1])

    kube = Kube([], {})
    client = ol.Ollama(kube, "ns", attempts=4, backoff=5, stall_seconds=60)  # type: ignore[arg-type]
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()  # a real Ctrl-C
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        client.pull_all(["a:1", "b:1"], skip_present=False)
    assert time.monotonic() - started < 5  # without the cancel: 10 s (the streams run out)
    assert all(s.dropped.is_set() for s in streams)
    assert kube.pulls == ["a:1", "b:1"]  # no retry was started after the interrupt
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("pull")]


# -- the name grammar, part by part (Ollama's types/model/name.go) ------------------------------------
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "the model is empty"),
        (":x", "the model is empty"),
        ("a:", "the tag is empty"),
        ("/m", "the namespace is empty"),
        ("h//m", "the namespace is empty"),
        ("m" * 80, None),
        ("m" * 81, "the model is longer than 80 characters"),
        ("m:" + "t" * 80, None),
        ("m:" + "t" * 81, "the tag is longer than 80 characters"),
        ("n" * 80 + "/m", None),
        ("n" * 81 + "/m", "the namespace is longer than 80 characters"),
        ("h" * 350 + "/n/m", None),
        ("h" * 351 + "/n/m", "the host is longer than 350 characters"),
        ("-m", "the model '-m' must start with a letter, a digit or _"),
        (".m", "the model '.m' must start with a letter, a digit or _"),
        ("_m", None),
        ("m@x$y", "the model 'm@x$y' may not contain '$' '@'"),
        ("ns.x/m", "the namespace 'ns.x' may not contain '.'"),
        ("ns-x_1/m-2.5_b", None),
        ("h:5000/n/m", None),  # a port, not a tag
        ("h_.x-y:1/n/m", None),
        ("a/b/c/d", "the host 'a/b' may not contain '/'"),
        ("m:a:b", "the model 'm:a' may not contain ':'"),
        ("m:t-1.2_Q", None),
        ("m:t:x/y", "the namespace 'm:t:x' may not contain ':'"),
        ("a/b:c/d", "the namespace 'b:c' may not contain ':'"),  # a tag only after the last '/'
        ("x://y://h/n/m", "the host 'y://h' may not contain '/'"),  # one scheme is dropped, once
    ],
)
def test_each_part_is_checked_with_its_own_length_and_characters(name, problem):
    assert ol.name_problem(name) == problem


def test_a_name_is_split_into_ollamas_parts_with_its_defaults():
    assert ol.parse_name("m") == ol.ModelName("registry.ollama.ai", "library", "m", "latest")
    assert ol.parse_name("ns/m:7b") == ol.ModelName("registry.ollama.ai", "ns", "m", "7b")
    assert ol.parse_name("https://h.io:5000/ns/m:7b") == ol.ModelName("h.io:5000", "ns", "m", "7b")
    assert ol.parse_name("h.io/ns/m") == ol.ModelName("h.io", "ns", "m", "latest")
    assert ol._cut("a/b/c", "/") == ("a/b", "c")
    assert ol._cut("abc", "/") == ("abc", None)
    assert ol._cut("/x", "/") == ("", "x")


def test_the_shortest_form_drops_only_the_default_host_and_namespace_whatever_their_case():
    assert ol.ModelName("registry.ollama.ai", "library", "m", "7b").shortest() == "m:7b"
    assert ol.ModelName("Registry.Ollama.AI", "Library", "m", "7b").shortest() == "m:7b"
    assert ol.ModelName("registry.ollama.ai", "me", "m", "7b").shortest() == "me/m:7b"
    assert ol.ModelName("h.io", "library", "m", "7b").shortest() == "h.io/library/m:7b"
    assert ol.normalise("  ns/m  ") == "ns/m:latest"
    assert ol.normalise("bad name") == "bad name:latest"  # refused names only get the tag
    assert ol.normalise("bad name:1") == "bad name:1"
    assert ol.normalise("a:b/bad name") == "a:b/bad name:latest"  # a ':' before the last '/' is no tag
    assert ol.normalise("a/b:c/d") == "a/b:c/d:latest"
    assert ol.normalise("a b:c/d") == "a b:c/d:latest"


def test_missing_models_are_normalised_once_each_and_compared_ignoring_case():
    wanted = ["mistral", "mistral:latest", "llama3.1:8b", "registry.ollama.ai/library/qwen:1b", "ns/x"]
    assert ol.missing_models(wanted, ["MISTRAL:LATEST", "library/qwen:1b"]) == ["llama3.1:8b", "ns/x:latest"]
    assert ol.missing_models(wanted, []) == ["mistral:latest", "llama3.1:8b", "qwen:1b", "ns/x:latest"]
    assert ol.model_key("Registry.Ollama.ai/Library/Mistral") == "mistral:latest"


@pytest.mark.parametrize(
    ("message", "status", "kind", "text", "hint", "retry"),
    [
        (
            "manifest unknown",
            404,
            ol.UnknownModelError,
            "m:1: no such model (manifest unknown)",
            ol.LIBRARY_HINT,
            False,
        ),
        (
            "file does not exist",
            404,
            ol.UnknownModelError,
            "m:1: no such model (file does not exist)",
            ol.LIBRARY_HINT,
            False,
        ),
        (
            "pull model manifest: not found",
            None,
            ol.UnknownModelError,
            "m:1: no such model (pull model manifest: not found)",
            ol.LIBRARY_HINT,
            False,
        ),
        (
            "Manifest Unknown",
            404,
            ol.UnknownModelError,
            "m:1: no such model (Manifest Unknown)",
            ol.LIBRARY_HINT,
            False,
        ),
        ("not found", 404, ol.OllamaError, "m:1: HTTP 404: not found", "", False),  # the proxy's 404: no Ollama
        (
            "pull model manifest: 500 internal",
            None,
            ol.OllamaError,
            "m:1: Ollama: pull model manifest: 500 internal",
            "",
            True,
        ),
        ("manifest unknown", 500, ol.OllamaError, "m:1: HTTP 500: manifest unknown", ol.LIBRARY_HINT, False),
        ("model not found", 500, ol.OllamaError, "m:1: HTTP 500: model not found", "", True),
        ("max retries exceeded", None, ol.OllamaError, "m:1: Ollama: max retries exceeded", "", True),
        ("bad", 400, ol.OllamaError, "m:1: HTTP 400: bad", "", False),
        ("x", 302, ol.OllamaError, "m:1: HTTP 302: x", "", True),
        (
            "Unauthorized",
            401,
            ol.OllamaError,
            "m:1: HTTP 401: Unauthorized",
            "the registry refuses this model without credentials",
            False,
        ),
        (
            "insecure protocol http",
            None,
            ol.OllamaError,
            "m:1: Ollama: insecure protocol http",
            ol.FINAL_MARKERS["insecure protocol"],
            False,
        ),
        (
            "missing request body",
            400,
            ol.OllamaError,
            "m:1: HTTP 400: missing request body",
            ol.FINAL_MARKERS["missing request body"],
            False,
        ),
    ],
)
def test_a_failure_is_classified_worded_and_hinted(message, status, kind, text, hint, retry):
    error = ol._failure("m:1", message, status)
    assert type(error) is kind
    assert (str(error), error.hint, error.retry) == (text + (f" — fix: {hint}" if hint else ""), hint, retry)


def test_an_ollama_error_keeps_its_hint_and_is_worth_another_try_unless_told():
    error = ol.OllamaError("boom", "do this")
    assert (str(error), error.hint, error.retry) == ("boom — fix: do this", "do this", True)
    assert ol.OllamaError("boom").hint == ""
    assert ol.OllamaError("boom", retry=False).retry is False


def test_the_watch_restarts_when_pulling_resumes_after_another_status():
    clock = Clock()
    watch = ol.StallWatch(10, clock)
    assert (watch.limit, watch.completed, watch.armed, watch.since) == (10, None, True, 0.0)
    clock.now += 11
    assert watch.stalled()  # armed from the start: a stream that never says anything stalls too
    watch.observe("verifying sha256 digest", 500)
    clock.now += 100
    assert not watch.stalled()
    watch.observe("pulling 0123456789ab", 500)  # the same bytes, but pulling again: the clock restarts
    clock.now += 10
    assert not watch.stalled()  # exactly the limit is not yet over it
    clock.now += 0.5
    assert watch.stalled()


def test_one_model_spelt_two_ways_is_missing_once():
    assert ol.missing_models(["Mistral", "mistral:latest", "llama3.1:8b"], ["llama3.1:8b"]) == ["Mistral:latest"]
    assert ol.missing_models(["mistral:latest"], ["mistral"]) == []
