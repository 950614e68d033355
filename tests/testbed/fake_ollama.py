"""A test Ollama that speaks Ollama 0.32's HTTP API the way the real server does (server/routes.go,
server/images.go, server/download.go, api/types.go, types/model/name.go), quirks included:

- POST /api/pull: 400 {"error": "missing request body"} for an empty body, 400 with Go's JSON
  error for a body that is not JSON, 400 {"error": "invalid model name"} for a name outside
  Ollama's grammar (its own copy here, not k3stack's). Otherwise HTTP 200 and NDJSON:
  "pulling manifest"; per layer, and then for the config blob, `pulling <digest[7:19]>` lines with
  digest/total/completed, ZERO FIELDS LEFT OUT (api.ProgressResponse's omitempty: no `completed`
  before the first byte), one line per `tick` (Ollama's 60 ms ticker) WHETHER OR NOT BYTES
  ARRIVED, so a stalled download repeats the same line; a blob that finishes between two ticks gets
  no further line (its last line shows it incomplete; a small blob may get none at all, with
  `first_byte_ticks` 0); a blob already on disk gets one line with completed = total; "verifying
  sha256 digest", "writing manifest", "removing unused layers" when a re-pull replaced layers (or
  "couldn't remove unused layers: …"), "success". A failure after
  "pulling manifest" is an {"error"} line on that HTTP 200: no such model (NOT_FOUND), a
  safetensors-only model (MLX_ERROR), injected download errors. Partially downloaded blobs stay, so
  another POST resumes instead of re-sending.
- Names resolve like Ollama: defaults registry.ollama.ai/library/…:latest, case-insensitive
  matching (an installed model keeps the case it was first pulled with), and GET /api/tags lists the
  shortest form (`library/mistral:7b` is `mistral:7b`, `hf.co/org/repo:Q4_K_M` stays) with
  size = layers + config blob.
- Connections are kept alive (HTTP/1.1, chunked streams end with their last chunk), as Go's server
  does; `connections` counts the TCP connections accepted.

Faults a test can inject: a stall (progress lines repeat with no new bytes, until the client drops
the stream or for `seconds`), {"error"} lines on HTTP 200, a new version of a model (`update`: a
re-pull replaces layers) and a failing clean-up (`prune_error`), a connection dropped without an
answer (`drop_next`), and latency per path.
`serve(sock)` answers on a socket from `kube.serve_behind_pods`, so the API server's service
proxy reaches it exactly as it reaches the real Ollama.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.32.15"
NOT_FOUND = "pull model manifest: file does not exist"
MLX_ERROR = "this model requires MLX support, but the MLX runtime is not available"
INVALID_NAME = "invalid model name"
CONFIG_SIZE = 487  # bytes of a model's config blob (application/vnd.docker.container.image.v1+json)


def serve(sock: socket.socket, handler: type[BaseHTTPRequestHandler], app) -> ThreadingHTTPServer:
    """Serve `handler` (which finds `app` as self.server.app) on an already listening socket."""
    server = ThreadingHTTPServer(sock.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()[:2]
    server.app = app
    server.handle_error = lambda request, address: None  # clients that hang up are expected
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, JSON in and out, silent. `keep_alive` False (the default, for the other test
    servers built on this class): every answer closes its connection. The test Ollama keeps its
    connections alive, as the real one does."""

    protocol_version = "HTTP/1.1"
    keep_alive = False

    def log_message(self, *args) -> None:
        pass

    def body(self) -> bytes:
        """The request body, sized or chunked (the API server's proxy forwards bodies chunked)."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers, up to the empty line
            pass
        return data

    def body_json(self) -> dict:
        try:
            return json.loads(self.body() or b"{}")
        except ValueError:
            return {}

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if not self.keep_alive:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, data, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(data).encode(), headers)

    def client_gone(self, wait: float) -> bool:
        """True once the client closed the connection (waits up to `wait` seconds to find out)."""
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


# -- names, as Ollama's types/model/name.go has them (an independent copy: tests compare k3stack's) -
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


def parse(name: str) -> tuple[str, str, str, str] | None:
    """(host, namespace, model, tag) with Ollama's defaults, or None when Ollama refuses the name."""
    host, namespace, tag = "registry.ollama.ai", "library", "latest"
    rest = name
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    if len(parts) > 3:
        parts = ["/".join(parts[:-2]), *parts[-2:]]
    if len(parts) == 3:
        host, namespace, model = parts
        host = host.split("://", 1)[-1]
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    ok = (
        _HOST.fullmatch(host) and _NAMESPACE.fullmatch(namespace) and _MODEL_OR_TAG.fullmatch(model)
    ) and _MODEL_OR_TAG.fullmatch(tag)
    return (host, namespace, model, tag) if ok else None


def shortest(name: str) -> str:
    """How /api/tags lists `name` (DisplayShortest); a name Ollama refuses is returned as is."""
    parsed = parse(name)
    if parsed is None:
        return name
    host, namespace, model, tag = parsed
    if host.lower() != "registry.ollama.ai":
        return f"{host}/{namespace}/{model}:{tag}"
    return f"{namespace}/{model}:{tag}" if namespace.lower() != "library" else f"{model}:{tag}"


normalise = shortest  # the name older callers use


def _find(names, name: str) -> str | None:
    """The entry of `names` that is `name` to Ollama (case-insensitive, defaults filled in)."""
    key = shortest(name).lower()
    return next((n for n in names if shortest(n).lower() == key), None)


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int


def layers_for(name: str, sizes: list[int]) -> list[Layer]:
    return [Layer("sha256:" + hashlib.sha256(f"{name}/{i}".encode()).hexdigest(), size) for i, size in enumerate(sizes)]


def config_for(name: str) -> Layer:
    """The model's config blob: pulled like a layer, after the layers, with its own line."""
    return Layer("sha256:" + hashlib.sha256(f"{shortest(name).lower()}/config".encode()).hexdigest(), CONFIG_SIZE)


class FakeOllama:
    """State of one Ollama: the registry it pulls from (`library`: shortest name -> layers; the
    config blob is added), what is on its disk (`blobs`: bytes per blob, partial ones included;
    `installed`: name -> size listed by /api/tags; `manifests`: name -> its blobs), and what it did
    (`sent`: bytes transferred per blob; `pull_requests`: the model of each POST /api/pull as
    sent; `lines`: every NDJSON line streamed; `connections`: TCP connections accepted;
    `dropped`: requests answered by closing the connection)."""

    def __init__(
        self,
        library: dict[str, list[int]] | None = None,
        *,
        rate: float = 40e6,
        tick: float = 0.06,
        step: int | None = None,
        mlx: tuple[str, ...] | set[str] = (),
    ):
        self.library = {shortest(n): layers_for(n, s) for n, s in (library or {}).items()}
        self.mlx = {shortest(n) for n in mlx}  # safetensors-only models: need MLX, which Linux lacks
        self.rate = rate  # bytes per second of a simulated download
        self.tick = tick  # seconds between two progress lines (Ollama: 60 ms)
        self.step = step  # unused: lines come per tick, as Ollama's do (kept for older callers)
        self.lock = threading.Lock()
        self.versions = 0
        self.reset()

    def reset(self) -> None:
        self.blobs: dict[str, int] = {}
        self.installed: dict[str, int] = {}
        self.manifests: dict[str, list[str]] = {}
        self.sent: Counter[str] = Counter()
        self.pull_requests: list[str] = []
        self.lines: list[dict] = []
        self.connections = 0
        self.dropped: list[str] = []
        self.drops: Counter[str] = Counter()  # path -> requests still to drop
        self.stalls: dict[str, tuple[int, float | None]] = {}  # name -> (after bytes, seconds or None)
        self.errors: dict[str, list[tuple[int, str]]] = {}  # name -> [(after bytes, message)], one per POST
        self.updates: dict[str, list[Layer]] = {}  # name -> the layers of its newer version
        self.prune_error: str | None = None  # "couldn't remove unused layers: <this>"
        # Ticks before a blob's first byte arrives (its lines then have no `completed`). With 0, a
        # blob fetched within one tick never shows in the stream at all, as happens with Ollama.
        self.first_byte_ticks = 1
        self.latency: dict[str, float] = {}  # path -> seconds before answering

    # -- injections -----------------------------------------------------------------------------
    def stall_once(self, name: str, after_bytes: int, seconds: float | None = None) -> None:
        """The next pull of `name` stops getting bytes once the model has `after_bytes`: progress
        lines keep coming with the same `completed` — until the client drops the stream, or for
        `seconds`, then the download goes on."""
        self.stalls[shortest(name)] = (after_bytes, seconds)

    def fail(self, name: str, message: str, *, after_bytes: int = 0, times: int = 1) -> None:
        self.errors.setdefault(shortest(name), []).extend([(after_bytes, message)] * times)

    def drop_next(self, path: str, times: int = 1) -> None:
        """The next request(s) for `path` get no answer: the connection is closed instead (a kept-alive
        backend connection dropped just as the proxy reuses it)."""
        self.drops[path] += times

    def install(self, name: str) -> None:
        """The model is on disk already (as after an earlier pull)."""
        name = shortest(name)
        for blob in self.blobs_of(name):
            self.blobs[blob.digest] = blob.size
        self.installed[name] = self.size(name)
        self.manifests[name] = [blob.digest for blob in self.blobs_of(name)]

    def update(self, name: str, sizes: list[int]) -> None:
        """The registry now has another version of `name` (new layers): a pull replaces it, and
        Ollama removes the layers nothing uses any more."""
        self.versions += 1
        self.updates[shortest(name)] = layers_for(f"{shortest(name)}@{self.versions}", sizes)

    def blobs_of(self, name: str) -> list[Layer]:
        """The blobs a pull of `name` fetches: its layers, then its config blob."""
        key = _find(self.library, name)
        assert key is not None, f"{name} is not in the test library"
        return [*self.updates.get(key, self.library[key]), config_for(key)]

    def size(self, name: str) -> int:
        """The size /api/tags lists: every layer plus the config blob (Manifest.Size)."""
        return sum(blob.size for blob in self.blobs_of(name))

    def tags(self) -> dict:
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2026-08-01T12:00:00.123456789Z",
                    "size": size,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "8.0B",
                        "quantization_level": "Q4_K_M",
                    },
                }
                for name, size in sorted(self.installed.items())
            ]
        }

    def serve(self, sock: socket.socket) -> ThreadingHTTPServer:
        return serve(sock, _OllamaHandler, self)


class _OllamaHandler(JsonHandler):
    server: ThreadingHTTPServer
    keep_alive = True

    @property
    def app(self) -> FakeOllama:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.app.lock:
            self.app.connections += 1

    def _begin(self) -> bool:
        """Latency, then False when this request is to be dropped (connection closed, no answer)."""
        path = self.path.split("?")[0]
        time.sleep(self.app.latency.get(path, 0))
        with self.app.lock:
            if self.app.drops[path] <= 0:
                return True
            self.app.drops[path] -= 1
            self.app.dropped.append(path)
        self.close_connection = True
        return False

    def do_GET(self) -> None:
        if not self._begin():
            return
        if self.path == "/api/version":
            self.send_json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self.send_json(200, self.app.tags())
        elif self.path == "/":
            self.send(200, b"Ollama is running", {"Content-Type": "text/plain; charset=utf-8"})
        else:
            self.send(404, b"404 page not found", {"Content-Type": "text/plain"})

    def do_POST(self) -> None:
        raw = self.body()
        if not self._begin():
            return
        if self.path not in ("/api/pull", "/api/show"):
            self.send(404, b"404 page not found", {"Content-Type": "text/plain"})
            return
        if not raw:
            self.send_json(400, {"error": "missing request body"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            first = raw.strip()[:1].decode(errors="replace")
            self.send_json(400, {"error": f"invalid character '{first}' looking for beginning of value"})
            return
        name = str(body.get("model") or body.get("name") or "")
        if self.path == "/api/show":
            installed = _find(self.app.installed, name)
            if parse(name) is None:
                self.send_json(400, {"error": INVALID_NAME})
            elif installed is None:
                self.send_json(404, {"error": f"model '{shortest(name)}' not found"})
            else:
                self.send_json(200, {"details": {"format": "gguf"}, "modelfile": f"FROM {installed}"})
            return
        with self.app.lock:
            self.app.pull_requests.append(name)
        if parse(name) is None:
            self.send_json(400, {"error": INVALID_NAME})
            return
        self._pull(name)

    # -- the pull stream ------------------------------------------------------------------------
    @staticmethod
    def _due(fault: tuple | None, pulled: int) -> bool:
        return fault is not None and pulled >= fault[0]

    def _got(self, blob: Layer, size: int) -> None:
        with self.app.lock:
            self.app.blobs[blob.digest] = self.app.blobs.get(blob.digest, 0) + size
            self.app.sent[blob.digest] += size

    def _line(self, data: dict) -> None:
        """One NDJSON line as Go's encoder writes api.ProgressResponse: zero fields left out."""
        data = {key: value for key, value in data.items() if value or key == "status"}
        with self.app.lock:
            self.app.lines.append(data)
        chunk = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.flush()

    def _pull(self, name: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._stream(name)
            self.wfile.write(b"0\r\n\r\n")  # the end of this answer; the connection stays open
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client hung up (an aborted, stalled stream)

    def _stream(self, requested: str) -> None:
        app = self.app
        self._line({"status": "pulling manifest"})
        key = _find(app.library, requested)
        if key is None:
            self._line({"error": NOT_FOUND})
            return
        if key in app.mlx:
            self._line({"error": MLX_ERROR})
            return
        with app.lock:
            error = app.errors[key].pop(0) if app.errors.get(key) else None
            stall = app.stalls.pop(key, None)
        # An installed model keeps its name's case (getExistingName); a new one is stored as asked.
        stored = _find(app.installed, requested) or shortest(requested)
        previous = set(app.manifests.get(stored, []))
        pulled = 0  # bytes of this model on disk, over all blobs
        for blob in app.blobs_of(key):
            done = app.blobs.get(blob.digest, 0)
            progress = {"status": f"pulling {blob.digest[7:19]}", "digest": blob.digest, "total": blob.size}
            if done == blob.size:  # already on disk: one line, no download
                pulled += done
                self._line({**progress, "completed": done})
                continue
            pulled += done
            stalled_since: float | None = None
            waiting = app.first_byte_ticks  # ticks before the first byte (a line without `completed`)
            while done < blob.size:
                step = min(max(1, int(app.rate * app.tick)), blob.size - done)
                if not waiting and done + step == blob.size and not self._due(stall, pulled):
                    # Done before the next tick: Ollama's Wait() returns on `done` without another
                    # line, so this blob's last line (if any) never shows it complete.
                    time.sleep(step / app.rate)
                    self._got(blob, step)
                    pulled += step
                    break
                time.sleep(app.tick)
                if self._due(error, pulled):
                    self._line({"error": error[1]})
                    return
                if self._due(stall, pulled):
                    stalled_since = stalled_since or time.monotonic()
                    limit = stall[1] if stall[1] is not None else 30.0
                    if time.monotonic() - stalled_since < limit:
                        self._line({**progress, "completed": done})  # the same line again: no bytes
                        continue
                    if stall[1] is None:
                        raise ConnectionAbortedError("stalled stream abandoned")
                    stall = None
                if waiting:
                    waiting -= 1
                else:
                    self._got(blob, step)
                    done += step
                    pulled += step
                self._line({**progress, "completed": done})
        if error is not None:
            self._line({"error": error[1]})
            return
        self._line({"status": "verifying sha256 digest"})
        self._line({"status": "writing manifest"})
        digests = [blob.digest for blob in app.blobs_of(key)]
        with app.lock:
            app.installed[stored] = app.size(key)
            app.manifests[stored] = digests
        unused = previous - set(digests) - {d for other in app.manifests.values() for d in other}
        if unused:
            self._line({"status": "removing unused layers"})
            if app.prune_error:
                self._line({"status": f"couldn't remove unused layers: {app.prune_error}"})
            else:
                with app.lock:
                    for digest in unused:
                        app.blobs.pop(digest, None)
        self._line({"status": "success"})
