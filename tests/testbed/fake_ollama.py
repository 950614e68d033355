"""A test Ollama that speaks Ollama's HTTP API as k3stack uses it: POST /api/pull streams NDJSON
("pulling manifest", per-layer progress with digest/total/completed, "verifying sha256 digest",
"writing manifest", "success"), keeps partially downloaded layers so a second POST resumes
instead of re-sending them, GET /api/tags, GET /api/version, POST /api/show.

Faults a test can inject: a stall (the stream goes silent mid-layer), {"error"} lines on HTTP 200,
an unknown model, a model listed with another size than was pulled (verification mismatch),
and latency per path. `serve(sock)` answers on a socket from `kube.serve_behind_pods`, so the
API server's service proxy reaches it exactly as it reaches the real Ollama.
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.32.15"
NOT_FOUND = "pull model manifest: file does not exist"


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
    """HTTP/1.1, JSON in and out, silent. Every answer closes its connection: a kept-alive backend
    connection that the API server's proxy reuses just as this server drops it fails that request
    (the client retries, as it should against a real Ollama) — which would make tests that count
    attempts depend on timing."""

    protocol_version = "HTTP/1.1"

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


def normalise(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int


def layers_for(name: str, sizes: list[int]) -> list[Layer]:
    return [Layer("sha256:" + hashlib.sha256(f"{name}/{i}".encode()).hexdigest(), size) for i, size in enumerate(sizes)]


class FakeOllama:
    """State of one Ollama: the registry it pulls from (`library`), what is on its disk
    (`blobs`: bytes per layer, partial ones included; `installed`), and what it did (`sent`:
    bytes transferred per layer; `pull_requests`: one name per POST /api/pull)."""

    def __init__(self, library: dict[str, list[int]] | None = None, *, rate: float = 40e6, step: int = 1 << 20):
        self.library = {normalise(n): layers_for(n, s) for n, s in (library or {}).items()}
        self.rate = rate  # bytes per second of a simulated download
        self.step = step  # bytes between two progress lines
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.blobs: dict[str, int] = {}
        self.installed: dict[str, int] = {}  # name -> size listed by /api/tags
        self.sent: Counter[str] = Counter()
        self.pull_requests: list[str] = []
        self.stalls: dict[str, int] = {}  # name -> go silent once the model has this many bytes
        self.errors: dict[str, list[tuple[int, str]]] = {}  # name -> [(after bytes, message)], one per POST
        self.mismatch: set[str] = set()
        self.latency: dict[str, float] = {}  # path -> seconds before answering

    # -- injections -----------------------------------------------------------------------------
    def stall_once(self, name: str, after_bytes: int) -> None:
        self.stalls[normalise(name)] = after_bytes

    def fail(self, name: str, message: str, *, after_bytes: int = 0, times: int = 1) -> None:
        self.errors.setdefault(normalise(name), []).extend([(after_bytes, message)] * times)

    def install(self, name: str) -> None:
        """The model is on disk already (as after an earlier pull)."""
        name = normalise(name)
        for layer in self.library[name]:
            self.blobs[layer.digest] = layer.size
        self.installed[name] = self.size(name)

    def size(self, name: str) -> int:
        return sum(layer.size for layer in self.library[normalise(name)])

    def tags(self) -> dict:
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2026-08-01T12:00:00Z",
                    "size": size,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {"format": "gguf", "family": name.split(":")[0]},
                }
                for name, size in sorted(self.installed.items())
            ]
        }

    def serve(self, sock: socket.socket) -> ThreadingHTTPServer:
        return serve(sock, _OllamaHandler, self)


class _OllamaHandler(JsonHandler):
    server: ThreadingHTTPServer

    @property
    def app(self) -> FakeOllama:
        return self.server.app  # type: ignore[attr-defined]

    def _delay(self) -> None:
        time.sleep(self.app.latency.get(self.path.split("?")[0], 0))

    def do_GET(self) -> None:
        self._delay()
        if self.path == "/api/version":
            self.send_json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self.send_json(200, self.app.tags())
        else:
            self.send(404, b"404 page not found", {"Content-Type": "text/plain"})

    def do_POST(self) -> None:
        self._delay()
        body = self.body_json()
        name = normalise(str(body.get("model") or body.get("name") or ""))
        if self.path == "/api/show":
            if name in self.app.installed:
                self.send_json(200, {"details": {"format": "gguf"}, "modelfile": f"FROM {name}"})
            else:
                self.send_json(404, {"error": f"model '{name}' not found"})
        elif self.path == "/api/pull":
            self._pull(name)
        else:
            self.send(404, b"404 page not found", {"Content-Type": "text/plain"})

    # -- the pull stream ------------------------------------------------------------------------
    def _line(self, data: dict) -> None:
        chunk = json.dumps(data).encode() + b"\n"
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.flush()

    def _pull(self, name: str) -> None:
        app = self.app
        with app.lock:
            app.pull_requests.append(name)
            error = app.errors[name].pop(0) if app.errors.get(name) else None
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        try:
            self._stream(name, error)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the client hung up (an aborted, stalled stream)

    def _stream(self, name: str, error: tuple[int, str] | None) -> None:
        app = self.app
        self._line({"status": "pulling manifest"})
        if name not in app.library:
            self._line({"error": NOT_FOUND})
            return
        pulled = 0  # bytes of this model on disk, over all layers
        for layer in app.library[name]:
            done = app.blobs.get(layer.digest, 0)
            pulled += done
            progress = {"status": f"pulling {layer.digest[7:19]}", "digest": layer.digest, "total": layer.size}
            self._line({**progress, "completed": done})
            while done < layer.size:
                if error is not None and pulled >= error[0]:
                    self._line({"error": error[1]})
                    return
                if name in app.stalls and pulled >= app.stalls[name]:
                    del app.stalls[name]
                    self._hang()
                    return
                step = min(app.step, layer.size - done)
                time.sleep(step / app.rate)
                done += step
                pulled += step
                with app.lock:
                    app.blobs[layer.digest] = done
                    app.sent[layer.digest] += step
                self._line({**progress, "completed": done})
        if error is not None:
            self._line({"error": error[1]})
            return
        self._line({"status": "verifying sha256 digest"})
        self._line({"status": "writing manifest"})
        with app.lock:
            app.installed[name] = app.size(name) + (1 if name in app.mismatch else 0)
        self._line({"status": "success"})

    def _hang(self, limit: float = 30) -> None:
        """A stalled download: nothing more is sent until the client gives up (or `limit`)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.client_gone(0.1):
            pass
        self.close_connection = True
        raise ConnectionAbortedError("stalled stream abandoned")
