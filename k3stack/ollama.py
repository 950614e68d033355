"""Ollama's models, managed through its HTTP API reached via the Kubernetes API server's service
proxy (only a kubeconfig needed: no port-forward, no public exposure of Ollama).

`pull_models` pulls several models at once, skips those already present, shows progress, and
survives a flaky download. What Ollama 0.32 really does (server/routes.go, server/images.go,
server/download.go, api/types.go, types/model/name.go) and what this module does about it:

- Names are `[host/][namespace/]model[:tag]`, upper case allowed, compared case-insensitively;
  /api/tags lists the shortest form (`registry.ollama.ai/library/mistral:7b` and
  `library/mistral:7b` are `mistral:7b`, a missing tag is `:latest`, `hf.co/<org>/<repo>:<quant>`
  stays). `parse_name` is Ollama's grammar, `normalise` the listed form, `model_key` the key that
  "already present" and verification compare.
- POST /api/pull answers HTTP 200 and streams NDJSON: "pulling manifest", `pulling <digest>` lines
  for each layer and then the config blob, "verifying sha256 digest", "writing manifest", maybe
  "removing unused layers" or "couldn't remove unused layers: …" (housekeeping, not a failure),
  "success". Zero fields are left out (`completed` before the first byte). Progress lines come
  from a 60 ms ticker whether bytes arrived or not, so a stall is judged by bytes (`StallWatch`):
  a download without new bytes for `stall_seconds` is dropped and retried; Ollama keeps finished
  layers and partial parts, so the retry resumes. A failure after the stream started is an
  {"error"} line on that HTTP 200.
- One retry policy (`retry_policy`: exponential backoff with jitter) for what another try can fix
  (`transient`): connection errors, timeouts, 5xx, stalls, Ollama's own download errors. A bad
  request (400 "invalid model name", "missing request body"), any other 4xx, a model that needs
  MLX, a manifest that does not exist (no such model or tag) are final: no retry, a hint instead.
- Every pull is verified against /api/tags afterwards, which also gives the model's size (the
  stream cannot: a blob fetched between two of Ollama's 60 ms ticks never shows in it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from tenacity import RetryCallState, Retrying

from .console import human_size
from .errors import K3stackError, command
from .retry import retrying

if TYPE_CHECKING:  # the Kubernetes client is a heavy import: settings validation needs none of it
    from .console import Console
    from .kube import Kube, ProxyResponse

SERVICE = "ollama"
PORT = 11434
READ_ATTEMPTS = 3  # tries of one GET (version, tags): a proxied request can fail on a reused connection
MAX_PAUSE = 60.0  # seconds: the longest pause between two tries

LIBRARY_HINT = "check the name and tag at https://ollama.com/library (e.g. llama3.1:8b)"
NAME_HINT = (
    "Ollama's model names are [host/][namespace/]model[:tag] of letters, digits, _ - . "
    "(e.g. llama3.1:8b, hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M)"
)
MLX_HINT = (
    "this tag ships safetensors weights only, which Ollama runs with MLX (Apple silicon), not on "
    "this Linux server: pick a GGUF tag of the model (e.g. a q4_K_M one)"
)
# Ollama's words for "no such model in the registry" (its manifest fetch 404s).
UNKNOWN_MODEL_MARKERS = ("file does not exist", "manifest unknown", "not found")
# Ollama's words for failures another try cannot fix, whatever the HTTP status (it sends some
# inside its HTTP 200 stream), with what to do about each.
FINAL_MARKERS: dict[str, str] = {
    "invalid model name": NAME_HINT,
    "missing request body": "k3stack sent a pull without a body: please report this",
    "requires mlx support": MLX_HINT,
    "pull model manifest: file does not exist": LIBRARY_HINT,
    "manifest unknown": LIBRARY_HINT,
    "no space left on device": "Ollama's volume is full: raise OLLAMA_STORAGE or remove models",
    "unauthorized": "the registry refuses this model without credentials",
    "insecure protocol": "an http:// registry needs Ollama's insecure pulls, which k3stack does not ask for",
}


class OllamaError(K3stackError):
    """Ollama could not do what was asked; `hint` says what to do about it, `retry` whether
    another try may succeed (see `transient`)."""

    def __init__(self, message: str, hint: str = "", *, retry: bool = True):
        super().__init__(message, hint)
        self.hint = hint
        self.retry = retry


class UnknownModelError(OllamaError):
    """The registry has no such model or tag (Ollama's manifest fetch 404s): final, no retry; the
    hint points at https://ollama.com/library."""

    def __init__(self, model: str, message: str):
        super().__init__(f"{model}: no such model ({message})", LIBRARY_HINT, retry=False)


class StallError(OllamaError):
    """A download got no new bytes for `stall_seconds` (see StallWatch); worth another try, which
    resumes where Ollama stopped."""

    pass


# -- names (Ollama's types/model/name.go) -----------------------------------------------------------
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
_PART_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_ALNUM_ = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_PART_EXTRA = {"host": "-.:", "namespace": "-", "model": "-.", "tag": "-."}  # allowed after the first character


@dataclass(frozen=True)
class ModelName:
    """A model name split as Ollama splits it, with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    def shortest(self) -> str:
        """The form /api/tags lists (Name.DisplayShortest): the default host and namespace left
        out, the tag always there."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"


def _cut(s: str, sep: str) -> tuple[str, str | None]:
    """cutPromised: split at the last `sep`; (s, None) without one. A side left empty stays "",
    which no part accepts (Ollama's MissingPart)."""
    i = s.rfind(sep)
    return (s, None) if i < 0 else (s[:i], s[i + 1 :])


def _part_problem(kind: str, value: str) -> str | None:
    if not value:
        return f"the {kind} is empty"
    if len(value) > _PART_LIMITS[kind]:
        return f"the {kind} is longer than {_PART_LIMITS[kind]} characters"
    if value[0] not in _ALNUM_:
        return f"the {kind} {value!r} must start with a letter, a digit or _"
    wrong = sorted({c for c in value if c not in _ALNUM_ and c not in _PART_EXTRA[kind]})
    if wrong:
        return f"the {kind} {value!r} may not contain {' '.join(repr(c) for c in wrong)}"
    return None


def parse_name(name: str) -> ModelName:
    """Split a model name with Ollama's own grammar (types/model/name.go, ParseName and
    Name.IsValid, Ollama 0.32): `[scheme://][host/][namespace/]model[:tag]`, where
    host is 1–350 of `A-Za-z0-9_-.:`, namespace 1–80 of `A-Za-z0-9_-`, model and tag 1–80 of
    `A-Za-z0-9_-.`, each starting with a letter, digit or `_`; upper case allowed. A tag is
    whatever follows the last `:` after the last `/` (so `host:5000/ns/model` has a port, no tag).
    Missing parts take Ollama's defaults: registry.ollama.ai, library, latest.

    >>> parse_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M").shortest()
    'hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M'

    Raises ValueError saying which part is wrong (Ollama answers 400 "invalid model name")."""
    s, tag, namespace, host = name, None, None, None
    if s.rfind(":") > s.rfind("/"):
        s, tag = _cut(s, ":")
    s, model = _cut(s, "/")
    if model is None:
        model = s
    else:
        s, namespace = _cut(s, "/")
        if namespace is None:
            namespace = s
        else:
            host = s.split("://", 1)[-1]  # a scheme (https://) is allowed and dropped
    parts = {
        "host": DEFAULT_HOST if host is None else host,
        "namespace": DEFAULT_NAMESPACE if namespace is None else namespace,
        "model": model,
        "tag": DEFAULT_TAG if tag is None else tag,
    }
    for kind, value in parts.items():
        problem = _part_problem(kind, value)
        if problem:
            raise ValueError(problem)
    return ModelName(**parts)


def name_problem(name: str) -> str | None:
    """None when Ollama accepts `name` as a model name, else why not (for settings checks)."""
    try:
        parse_name(name)
    except ValueError as exc:
        return str(exc)
    return None


def normalise(name: str) -> str:
    """The name as /api/tags lists it: `mistral` is `mistral:latest`, `registry.ollama.ai/library/
    mistral:7b` is `mistral:7b`. A name Ollama would refuse only gets `:latest` if it has no tag."""
    name = name.strip()
    try:
        return parse_name(name).shortest()
    except ValueError:
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def model_key(name: str) -> str:
    """What two names must share to be the same model to Ollama (it compares names ignoring case)."""
    return normalise(name).lower()


def missing_models(wanted: Iterable[str], listed: Iterable[str]) -> list[str]:
    """The `wanted` models (normalised) that `listed` (names from /api/tags) does not have."""
    present = {model_key(n) for n in listed}
    once: dict[str, str] = {}  # model_key -> the first spelling: `Mistral` and `mistral:latest` are one model
    for name in wanted:
        once.setdefault(model_key(name), normalise(name))
    return [name for key, name in once.items() if key not in present]


# -- what is worth another try ----------------------------------------------------------------------
def transient(message: str, status: int | None = None) -> bool:
    """Is a failure worth another try? `status`: the HTTP status of the answer; None when the
    connection failed or broke, or for an {"error"} line inside Ollama's HTTP 200 stream.

    Final: Ollama's words for a bad request or a model that cannot be pulled here (FINAL_MARKERS:
    invalid name, missing body, needs MLX, no such manifest, disk full, no access), whatever the
    status; and every 4xx but 408 and 429. Worth another try: connection errors, timeouts, stalls,
    5xx, 408/429, and Ollama's own download errors ("max retries exceeded", "digest mismatch":
    a new pull resumes)."""
    lowered = message.lower()
    if any(marker in lowered for marker in FINAL_MARKERS):
        return False
    if status is None or status < 400:
        return True
    return status >= 500 or status in (408, 429)


def _failure(model: str, message: str, status: int | None) -> OllamaError:
    lowered = message.lower()
    if "pull model manifest" in lowered and any(m in lowered for m in UNKNOWN_MODEL_MARKERS):
        return UnknownModelError(model, message)
    if status == 404 and any(m in lowered for m in UNKNOWN_MODEL_MARKERS[:2]):
        return UnknownModelError(model, message)
    hint = next((hint for marker, hint in FINAL_MARKERS.items() if marker in lowered), "")
    text = f"{model}: Ollama: {message}" if status is None else f"{model}: HTTP {status}: {message}"
    return OllamaError(text, hint, retry=transient(message, status))


def _stream_error(model: str, message: str) -> OllamaError:
    """An {"error"} line in the pull stream (HTTP 200)."""
    return _failure(model, message, None)


def _http_error(model: str, response: ProxyResponse) -> OllamaError:
    """A non-200 answer to the pull, from Ollama (400 for a bad request) or from the API server's
    proxy (5xx: no endpoints yet, a backend connection that broke)."""
    return _failure(model, response.message(), response.status)


def retry_policy(
    attempts: int,
    backoff: float,
    sleep: Callable[[float], None] = time.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    """k3stack's one retry policy towards Ollama: up to `attempts` tries while the failure is an
    OllamaError with `retry` set (see `transient`); pause n is backoff·2^(n-1) plus up to
    `backoff` at random (jitter: parallel pulls do not retry in step), at most MAX_PAUSE seconds.
    The last failure is raised as it is."""
    return retrying(
        lambda exc: isinstance(exc, OllamaError) and exc.retry,
        attempts=attempts,
        first=backoff,
        cap=MAX_PAUSE,
        jitter=backoff,
        sleep=sleep,
        before_sleep=before_sleep,
    )


# -- the stall watchdog -----------------------------------------------------------------------------
class StallWatch:
    """Tells a stalled download from a slow one by BYTES, never by lines: Ollama repeats its
    progress line every ~60 ms whether bytes arrived or not (server/download.go, a ticker), so a
    stalled pull keeps its stream busy and only the byte count shows progress. Armed while Ollama
    is pulling (status "pulling …"); other statuses (verifying, writing: Ollama may then be silent
    for minutes) restart the clock, and the stream's read timeout is the limit there."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self.completed: int | None = None
        self.since = clock()
        self.armed = True

    def observe(self, status: str, completed: int) -> None:
        """One line of the stream: its status and the bytes completed over all layers so far."""
        armed = status.startswith("pulling")
        if completed != self.completed or not (armed and self.armed):  # new bytes, or (re)armed
            self.since = self.clock()
        self.completed = completed
        self.armed = armed

    def stalled(self) -> bool:
        """No new bytes for longer than `limit` while pulling."""
        return self.armed and self.clock() - self.since > self.limit


@dataclass(frozen=True)
class Model:
    """A model on Ollama's volume, as /api/tags lists it."""

    name: str
    size: int
    digest: str = ""
    modified: str = ""


@dataclass(frozen=True)
class Progress:
    """Where one model's pull stands: Ollama's status words and bytes over all layers so far."""

    model: str
    status: str
    completed: int = 0
    total: int = 0
    attempt: int = 1
    done: bool = False


@dataclass
class PullResult:
    """One model's outcome: `action` is pulled, present (skipped) or failed (with error + hint)."""

    model: str
    action: str
    seconds: float = 0.0
    attempts: int = 0
    size: int = 0
    error: str = ""
    hint: str = ""

    @property
    def ok(self) -> bool:
        """True unless the model's pull failed (pulled or already present)."""
        return self.action != "failed"


@dataclass
class PullReport:
    """The outcome of `Ollama.pull_all`: one PullResult per model, in the order the names were first
    given (names of the same model counted once); `seconds` for the whole run."""

    results: list[PullResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no model failed (also for no models at all)."""
        return all(r.ok for r in self.results)

    def to_json(self) -> dict:
        """{"ok": bool, "seconds": float, "models": [each PullResult's fields]}, floats rounded to
        milliseconds (the JSON output of `inv models.pull`)."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "models": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(r).items()} for r in self.results
            ],
        }


OnProgress = Callable[[Progress], None]


class Ollama:
    """The stack's Ollama, reached as Service `service`:`port` in `namespace`.

    `stall_seconds`: a download without new bytes this long is dropped and retried.
    `attempts`: tries per model (a retry resumes); `backoff`: the first pause between tries
    (see `retry_policy`). `silence_seconds`: how long Ollama may say nothing while it verifies
    and writes a model (it sends no lines then; big models take minutes)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        *,
        service: str = SERVICE,
        port: int = PORT,
        stall_seconds: float = 60,
        attempts: int = 4,
        backoff: float = 2,
        silence_seconds: float = 1800,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.kube = kube
        self.namespace = namespace
        self.service = service
        self.port = port
        self.stall_seconds = stall_seconds
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.silence_seconds = silence_seconds
        # Ctrl-C (`cancel`) must end pulls at once: pauses between tries wait on the cancel event
        # (unless a test injected its own sleep), open streams are aborted.
        self._cancelled = threading.Event()
        self._streams: set[ProxyResponse] = set()
        self._streams_lock = threading.Lock()
        self.sleep = self._cancelled.wait if sleep is time.sleep else sleep

    def cancel(self) -> None:
        """Stop every pull of this client now, from any thread: no new try starts, pauses end, and
        each open pull stream is dropped (its model's result is a failure, not retried). What Ollama
        already downloaded stays: a later pull resumes it."""
        self._cancelled.set()
        with self._streams_lock:
            for response in list(self._streams):
                response.abort()

    @classmethod
    def from_settings(cls, kube: Kube, settings, **overrides) -> Ollama:
        """The stack's Ollama as the settings describe it (STACK_NAMESPACE; OLLAMA_PULL_STALL_SECONDS
        and OLLAMA_PULL_ATTEMPTS when the settings have them)."""
        values = settings.values
        options = {
            "stall_seconds": float(values.get("OLLAMA_PULL_STALL_SECONDS") or 60),
            "attempts": int(values.get("OLLAMA_PULL_ATTEMPTS") or 4),
            **overrides,
        }
        return cls(kube, settings["STACK_NAMESPACE"], **options)

    @property
    def where(self) -> str:
        """Where this Ollama is, for messages: "service NAME:PORT in namespace NS"."""
        return f"service {self.service}:{self.port} in namespace {self.namespace}"

    # -- reading ------------------------------------------------------------------------------------
    def _get(self, path: str, attempts: int = READ_ATTEMPTS) -> dict:
        """GET through the proxy, retried by the policy (a kept-alive backend connection can
        break just as the proxy reuses it; Ollama restarting answers 5xx for a moment)."""
        return retry_policy(attempts, self.backoff, self.sleep)(self._get_once, path)

    def _get_once(self, path: str) -> dict:
        from .kube import KubeError

        try:
            response = self.kube.proxy("GET", self.namespace, self.service, self.port, path, timeout=30)
        except KubeError as exc:
            raise OllamaError(f"Ollama ({self.where}): {exc}", "is the cluster reachable?") from None
        if response.status != 200:
            message = response.message()
            raise OllamaError(
                f"Ollama ({self.where}) GET /{path}: HTTP {response.status} {message}",
                f"is Ollama deployed and ready? {command('status')} shows it; {command('deploy')} starts it",
                retry=transient(message, response.status),
            )
        data = response.json()
        if not isinstance(data, dict):
            raise OllamaError(
                f"Ollama ({self.where}) GET /{path}: not JSON: {response.message()}",
                "is OLLAMA_BASE_URL (or the Service ollama) Ollama's API, not another server or a proxy page?",
            )
        return data

    def version(self) -> str:
        """Ollama's version (GET /api/version)."""
        return str(self._get("api/version").get("version", ""))

    def wait_ready(self, timeout: float = 60, interval: float = 1) -> str:
        """Ollama's version once it answers through the proxy (right after a rollout the Service
        may have no endpoints for a moment); raises OllamaError with the last answer at `timeout`,
        or at once when `cancel` was called (a deploy whose rollout failed)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._cancelled.is_set():
                raise OllamaError(f"Ollama ({self.where}): cancelled", retry=False)
            try:
                return str(self._get("api/version", attempts=1).get("version", ""))
            except OllamaError:
                if time.monotonic() + interval > deadline:
                    raise
            self.sleep(interval)

    def models(self) -> list[Model]:
        """The models on Ollama's volume (GET /api/tags), by name."""
        listed = self._get("api/tags").get("models") or []
        return sorted(
            (
                Model(
                    normalise(m.get("name") or m.get("model") or ""),
                    int(m.get("size") or 0),
                    m.get("digest", ""),
                    m.get("modified_at", ""),
                )
                for m in listed
            ),
            key=lambda m: m.name,
        )

    # -- pulling ------------------------------------------------------------------------------------
    def pull_all(
        self, names: Iterable[str], on_progress: OnProgress | None = None, *, skip_present: bool = True
    ) -> PullReport:
        """Pull every model not yet present, all at once. A name Ollama would refuse fails at once
        without asking it. Raises OllamaError only when Ollama cannot be reached at all; a model's
        own failure is its result (the others go on)."""
        started = time.monotonic()
        wanted: dict[str, str] = {}  # key -> the name as written (first spelling wins)
        for name in names:
            wanted.setdefault(model_key(name), name.strip())
        results: dict[str, PullResult] = {}
        for key, name in wanted.items():
            problem = name_problem(name)
            if problem:
                error = f"{name}: invalid model name ({problem})"
                results[key] = PullResult(normalise(name), "failed", error=error, hint=NAME_HINT)
        if skip_present and len(results) < len(wanted):
            present = {model_key(m.name): m for m in self.models()}
            for key, name in wanted.items():
                if key in present and key not in results:
                    results[key] = PullResult(normalise(name), "present", size=present[key].size)
        missing = [key for key in wanted if key not in results]
        if missing:
            pool = ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix="pull")
            try:
                pulled = pool.map(lambda key: self.pull(wanted[key], on_progress), missing)
                results.update(zip(missing, pulled, strict=True))
            except BaseException:  # Ctrl-C: the workers would stream on until their downloads end
                self.cancel()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return PullReport([results[key] for key in wanted], time.monotonic() - started)

    def pull(self, name: str, on_progress: OnProgress | None = None) -> PullResult:
        """Pull one model (retrying what `transient` allows, resuming) and verify it through
        /api/tags. The name goes to Ollama as written; results and progress use `normalise`."""
        name = name.strip()
        shown = normalise(name)
        report = on_progress or (lambda p: None)
        started = time.monotonic()
        tries = 0

        def attempt() -> int:
            nonlocal tries
            if self._cancelled.is_set():
                raise OllamaError(f"{shown}: cancelled", retry=False)
            tries += 1
            self._attempt(name, shown, tries, report)
            return self._verify(shown)

        def retrying(state: RetryCallState) -> None:
            pause = state.next_action.sleep if state.next_action else 0.0
            failure = state.outcome.exception() if state.outcome else None
            report(Progress(shown, f"retrying in {pause:.1f}s: {failure}", attempt=state.attempt_number))

        try:
            size = retry_policy(self.attempts, self.backoff, self.sleep, retrying)(attempt)
        except OllamaError as exc:
            report(Progress(shown, f"failed: {exc.what}", attempt=tries, done=True))
            return PullResult(shown, "failed", time.monotonic() - started, tries, error=exc.what, hint=exc.hint)
        report(Progress(shown, "success", size, size, tries, done=True))
        return PullResult(shown, "pulled", time.monotonic() - started, tries, size)

    def _attempt(self, name: str, shown: str, attempt: int, report: OnProgress) -> int:
        """One POST /api/pull, followed to "success"; returns the bytes the stream showed."""
        from .kube import KubeError

        try:
            with self.kube.proxy_stream(
                "POST",
                self.namespace,
                self.service,
                self.port,
                "api/pull",
                body={"model": name, "stream": True},
                timeout=self.silence_seconds,
            ) as response:
                if response.status != 200:
                    response.body = response.read()
                    raise _http_error(shown, response)
                return self._follow(shown, attempt, response, report)
        except KubeError as exc:
            raise OllamaError(f"{shown}: {exc}") from None

    def _follow(self, name: str, attempt: int, response: ProxyResponse, report: OnProgress) -> int:
        from .kube import KubeError

        blobs: dict[str, tuple[int, int]] = {}  # digest -> (completed, total): layers and the config blob
        watch = StallWatch(self.stall_seconds)
        lock = threading.Lock()
        finished = threading.Event()
        stalled = threading.Event()

        def watchdog() -> None:
            # A stalled download keeps the connection open (and busy): only a watchdog can tell.
            while not finished.wait(min(1.0, self.stall_seconds / 10)):
                with lock:
                    expired = watch.stalled()
                if expired:
                    stalled.set()
                    response.abort()
                    return

        threading.Thread(target=watchdog, name=f"stall-{name}", daemon=True).start()
        with self._streams_lock:
            self._streams.add(response)
        if self._cancelled.is_set():
            response.abort()
        stall = StallError(f"{name}: no new bytes for {self.stall_seconds:.0f}s (stalled download)")
        status = ""
        try:
            for raw in response.lines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # not NDJSON (a proxy's error page): the end of stream decides
                if not isinstance(line, dict):
                    continue
                if "error" in line:
                    raise _stream_error(name, str(line["error"]))
                status = str(line.get("status", ""))
                digest = line.get("digest")
                if digest:  # zero fields are omitted: no `completed` before the first byte
                    blobs[digest] = (int(line.get("completed") or 0), int(line.get("total") or 0))
                completed = sum(c for c, _ in blobs.values())
                total = sum(t for _, t in blobs.values())
                with lock:
                    watch.observe(status, completed)
                report(Progress(name, status, completed, total, attempt))
                if status == "success":
                    return total
        except KubeError as exc:
            if self._cancelled.is_set():
                raise OllamaError(f"{name}: cancelled", retry=False) from None
            if stalled.is_set():
                raise stall from None
            raise OllamaError(f"{name}: {exc}") from None
        finally:
            finished.set()
            with self._streams_lock:
                self._streams.discard(response)
        if self._cancelled.is_set():
            raise OllamaError(f"{name}: cancelled", retry=False)
        if stalled.is_set():
            raise stall
        raise OllamaError(
            f"{name}: the pull stream ended without success (last status: {status or 'none'})",
            f"pull it again ({command('models.pull')} resumes finished layers); `kubectl logs deploy/ollama` "
            "tells why Ollama stopped",
        )

    def _verify(self, name: str) -> int:
        """The model's size as /api/tags lists it, once it is listed there. Not compared with the
        bytes the stream showed: Ollama reports a blob only on its 60 ms ticks, so a blob fetched
        between two ticks (a small layer, the config blob) may never appear in the stream."""
        listed = {model_key(m.name): m for m in self.models()}
        model = listed.get(model_key(name))
        if model is None:
            raise OllamaError(
                f"{name}: the pull said success but /api/tags does not list it",
                "look at Ollama's log (kubectl logs deploy/ollama); the volume may be full",
            )
        return model.size


# -- for the tasks ---------------------------------------------------------------------------------
def progress_names(names: Iterable[str], namespace: str = "") -> list[str]:
    """The names `pull_models` shows progress under, once each: the listed form (`normalise`),
    followed by ` (namespace)` when given (several stacks pulling at once)."""
    return list(dict.fromkeys(normalise(n) + (f" ({namespace})" if namespace else "") for n in names))


def pull_models(
    ollama: Ollama,
    names: Iterable[str],
    console: Console,
    *,
    on_progress: OnProgress | None = None,
    namespace: str = "",
) -> PullReport:
    """`inv models.pull`: pull with a progress bar per model (plain lines when not interactive),
    then one line per model. The caller exits non-zero when `report.ok` is False. Raises
    OllamaError when Ollama cannot be asked (not ready in time, or `cancel`led before it was).

    For a deploy, whose pulls run while rollouts are still shown: `on_progress` is progress the
    caller already shows (console.pull_progress of `progress_names`), used instead of bars of its
    own; `namespace` (several stacks pulling at once) names the stack in every line, as
    `llama3.1:8b (ns): …` and `ns/model llama3.1:8b created …`. Results keep the plain names."""
    names = list(names)
    console.step(f"pulling {len(names)} model(s) through {ollama.where}")
    ollama.wait_ready()
    given = nullcontext(on_progress) if on_progress is not None else None
    with given or console.pull_progress(progress_names(names, namespace)) as show:
        if namespace:
            label = f" ({namespace})"
            report = ollama.pull_all(names, lambda p: show(replace(p, model=p.model + label)))
        else:
            report = ollama.pull_all(names, show)
    where = f"{namespace}/" if namespace else ""
    for result in report.results:
        if result.action == "present":
            console.result(f"{where}model {result.model}", "unchanged", f"(already present, {human_size(result.size)})")
        elif result.ok:
            console.result(
                f"{where}model {result.model}",
                "created",
                f"({human_size(result.size)} in {result.seconds:.1f}s, {result.attempts} attempt(s))",
            )
        else:
            console.result(f"{where}model {result.model}", "failed", f"— {result.error}")
            if result.hint:
                console.line(f"  hint: {result.hint}")
    return report


def model_rows(models: list[Model], wanted: Iterable[str] = ()) -> list[list[str]]:
    """`inv models.list`: name, size, modified, and whether the settings ask for it."""
    wanted = list(wanted)
    keys = {model_key(n) for n in wanted}
    rows = [[m.name, human_size(m.size), m.modified[:19], "yes" if model_key(m.name) in keys else ""] for m in models]
    rows += [[name, "-", "-", "yes (missing)"] for name in sorted(missing_models(wanted, [m.name for m in models]))]
    return rows


MODEL_COLUMNS = ["model", "size", "modified", "configured"]
