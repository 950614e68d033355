"""Ollama's models, managed through its HTTP API reached via the Kubernetes API server's service
proxy (only a kubeconfig needed: no port-forward, no public exposure of Ollama).

`pull_models` pulls several models at once, skips those already present, shows progress, and
survives a flaky download: a stream that makes no progress for `stall_seconds` is dropped and
the pull retried with backoff (Ollama keeps finished layers, so a retry resumes). An {"error"}
line in the stream fails the attempt with Ollama's message; an unknown model fails at once.
Every pull is verified against /api/tags afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .console import Console, human_size
from .kube import Kube, KubeError, ProxyResponse

SERVICE = "ollama"
PORT = 11434
# Ollama's words for "no such model in the registry" (manifest fetch 404s).
UNKNOWN_MODEL_MARKERS = ("file does not exist", "manifest unknown", "not found")
# Errors a retry cannot fix.
PERMANENT_MARKERS = ("no space left on device", "invalid model name", "unauthorized")
LIBRARY_HINT = "check the name and tag at https://ollama.com/library (e.g. llama3.1:8b)"


class OllamaError(RuntimeError):
    """Ollama could not do what was asked; `hint` says what to do about it."""

    def __init__(self, message: str, hint: str = "", *, retry: bool = True):
        super().__init__(message)
        self.hint = hint
        self.retry = retry


class UnknownModelError(OllamaError):
    def __init__(self, model: str, message: str):
        super().__init__(f"{model}: no such model ({message})", LIBRARY_HINT, retry=False)


class StallError(OllamaError):
    pass


def normalise(name: str) -> str:
    """Ollama's canonical name: /api/tags lists `mistral` as `mistral:latest`."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


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
        return self.action != "failed"


@dataclass
class PullReport:
    results: list[PullResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict:
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

    `stall_seconds`: a download making no progress for this long is dropped and retried.
    `attempts`: tries per model (a retry resumes); `backoff`: first pause between tries,
    doubled each time. `silence_seconds`: how long Ollama may say nothing while it verifies
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
        self.sleep = sleep

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
        return f"service {self.service}:{self.port} in namespace {self.namespace}"

    # -- reading ------------------------------------------------------------------------------------
    def _get(self, path: str) -> dict:
        try:
            response = self.kube.proxy("GET", self.namespace, self.service, self.port, path, timeout=30)
        except KubeError as exc:
            raise OllamaError(f"Ollama ({self.where}): {exc}", "is the cluster reachable?") from None
        if response.status != 200:
            raise OllamaError(
                f"Ollama ({self.where}) GET /{path}: HTTP {response.status} {response.message()}",
                "is Ollama deployed and ready? `inv status` shows it; `inv deploy` starts it",
            )
        data = response.json()
        if not isinstance(data, dict):
            raise OllamaError(f"Ollama ({self.where}) GET /{path}: not JSON: {response.message()}")
        return data

    def version(self) -> str:
        """Ollama's version (GET /api/version)."""
        return str(self._get("api/version").get("version", ""))

    def wait_ready(self, timeout: float = 60, interval: float = 1) -> str:
        """Ollama's version once it answers through the proxy (right after a rollout the Service
        may have no endpoints for a moment); raises OllamaError with the last answer at `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.version()
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
        """Pull every model not yet present, all at once. Raises OllamaError only when Ollama
        cannot be reached at all; a model's own failure is its result (the others go on)."""
        started = time.monotonic()
        wanted = list(dict.fromkeys(normalise(n) for n in names))
        present = {m.name: m for m in self.models()} if skip_present else {}
        results: dict[str, PullResult] = {
            name: PullResult(name, "present", size=present[name].size) for name in wanted if name in present
        }
        missing = [name for name in wanted if name not in results]
        if missing:
            with ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix="pull") as pool:
                for result in pool.map(lambda n: self.pull(n, on_progress), missing):
                    results[result.model] = result
        return PullReport([results[name] for name in wanted], time.monotonic() - started)

    def pull(self, name: str, on_progress: OnProgress | None = None) -> PullResult:
        """Pull one model (retrying, resuming) and verify it through /api/tags."""
        name = normalise(name)
        report = on_progress or (lambda p: None)
        started = time.monotonic()
        delay = self.backoff
        error: OllamaError | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                size = self._attempt(name, attempt, report)
                self._verify(name, size)
            except OllamaError as exc:
                error = exc
                if not exc.retry or attempt == self.attempts:
                    break
                report(Progress(name, f"retrying in {delay:.0f}s: {exc}", attempt=attempt))
                self.sleep(delay)
                delay = min(delay * 2, 60)
                continue
            report(Progress(name, "success", size, size, attempt, done=True))
            return PullResult(name, "pulled", time.monotonic() - started, attempt, size)
        assert error is not None
        report(Progress(name, f"failed: {error}", attempt=attempt, done=True))
        return PullResult(name, "failed", time.monotonic() - started, attempt, error=str(error), hint=error.hint)

    def _attempt(self, name: str, attempt: int, report: OnProgress) -> int:
        """One POST /api/pull, followed to "success"; returns the model's size (sum of layers)."""
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
                    raise _http_error(name, response)
                return self._follow(name, attempt, response, report)
        except KubeError as exc:
            raise OllamaError(f"{name}: {exc}") from None

    def _follow(self, name: str, attempt: int, response: ProxyResponse, report: OnProgress) -> int:
        layers: dict[str, tuple[int, int]] = {}  # digest -> (completed, total)
        state = {"at": time.monotonic(), "done": -1, "downloading": True}
        finished = threading.Event()

        def watchdog() -> None:
            # A stalled download still holds the connection open: only a watchdog can tell.
            while not finished.wait(min(1.0, self.stall_seconds / 10)):
                if state["downloading"] and time.monotonic() - state["at"] > self.stall_seconds:
                    state["stalled"] = True
                    response.abort()
                    return

        threading.Thread(target=watchdog, name=f"stall-{name}", daemon=True).start()
        status = ""
        try:
            for raw in response.lines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # not NDJSON (a proxy's error page): the end of stream decides
                if "error" in line:
                    raise _stream_error(name, str(line["error"]))
                status = str(line.get("status", ""))
                if "digest" in line:
                    layers[line["digest"]] = (int(line.get("completed") or 0), int(line.get("total") or 0))
                completed = sum(c for c, _ in layers.values())
                total = sum(t for _, t in layers.values())
                if completed != state["done"] or not status.startswith("pulling "):
                    state.update(at=time.monotonic(), done=completed)
                state["downloading"] = status.startswith("pulling")
                report(Progress(name, status, completed, total, attempt))
                if status == "success":
                    return total
        except KubeError as exc:
            if state.get("stalled"):
                raise StallError(f"{name}: no progress for {self.stall_seconds:.0f}s (stalled download)") from None
            raise OllamaError(f"{name}: {exc}") from None
        finally:
            finished.set()
        if state.get("stalled"):
            raise StallError(f"{name}: no progress for {self.stall_seconds:.0f}s (stalled download)")
        raise OllamaError(f"{name}: the pull stream ended without success (last status: {status or 'none'})")

    def _verify(self, name: str, size: int) -> None:
        listed = {m.name: m for m in self.models()}
        if name not in listed:
            raise OllamaError(
                f"{name}: the pull said success but /api/tags does not list it",
                "look at Ollama's log (kubectl logs deploy/ollama); the volume may be full",
            )
        if size and listed[name].size != size:
            raise OllamaError(
                f"{name}: /api/tags lists {listed[name].size} bytes but the pull fetched {size}",
                "the model on the volume does not match what was downloaded; pull it again",
            )


def _stream_error(model: str, message: str) -> OllamaError:
    lowered = message.lower()
    if "pull model manifest" in lowered and any(m in lowered for m in UNKNOWN_MODEL_MARKERS):
        return UnknownModelError(model, message)
    if any(m in lowered for m in PERMANENT_MARKERS):
        return OllamaError(f"{model}: Ollama: {message}", retry=False)
    return OllamaError(f"{model}: Ollama: {message}")


def _http_error(model: str, response: ProxyResponse) -> OllamaError:
    message = response.message()
    if response.status == 404 and any(m in message.lower() for m in UNKNOWN_MODEL_MARKERS[:2]):
        return UnknownModelError(model, message)
    if 400 <= response.status < 500 and response.status not in (408, 429):
        return OllamaError(f"{model}: HTTP {response.status}: {message}", retry=False)
    # 5xx through the proxy: Ollama restarting, no endpoints yet; worth another try.
    return OllamaError(f"{model}: HTTP {response.status}: {message}")


# -- for the tasks ---------------------------------------------------------------------------------
def pull_models(ollama: Ollama, names: Iterable[str], console: Console) -> PullReport:
    """`inv models.pull`: pull with a progress bar per model (plain lines when not interactive),
    then one line per model. The caller exits non-zero when `report.ok` is False."""
    names = list(names)
    console.step(f"pulling {len(names)} model(s) through {ollama.where}")
    ollama.wait_ready()
    with console.pull_progress([normalise(n) for n in names]) as on_progress:
        report = ollama.pull_all(names, on_progress)
    for result in report.results:
        if result.action == "present":
            console.result(f"model {result.model}", "unchanged", f"(already present, {human_size(result.size)})")
        elif result.ok:
            console.result(
                f"model {result.model}",
                "created",
                f"({human_size(result.size)} in {result.seconds:.1f}s, {result.attempts} attempt(s))",
            )
        else:
            console.result(f"model {result.model}", "failed", f"— {result.error}")
            if result.hint:
                console.line(f"  hint: {result.hint}")
    return report


def model_rows(models: list[Model], wanted: Iterable[str] = ()) -> list[list[str]]:
    """`inv models.list`: name, size, modified, and whether the settings ask for it."""
    wanted_set = {normalise(n) for n in wanted}
    rows = [[m.name, human_size(m.size), m.modified[:19], "yes" if m.name in wanted_set else ""] for m in models]
    present = {m.name for m in models}
    rows += [[name, "-", "-", "yes (missing)"] for name in sorted(wanted_set - present)]
    return rows


MODEL_COLUMNS = ["model", "size", "modified", "configured"]
