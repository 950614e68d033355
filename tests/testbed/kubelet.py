"""The kubelet's streaming endpoint the bed lacked: `exec` into a pod, for real, through the API server.

`kubectl exec` and the official client's `stream()` open a WebSocket to the API server
(`/api/v1/namespaces/NS/pods/POD/exec?command=...`); the API server (1.20 here) proxies that
upgrade unchanged to the kubelet of the pod's node — at the node's InternalIP and the port in
`status.daemonEndpoints.kubeletEndpoint`, over TLS — as `/exec/NS/POD/CONTAINER?command=...&input=1
&output=1&error=1`. This module is that kubelet side: a TLS server on the node's address speaking
the kubelet's remotecommand protocol over WebSocket (RFC 6455), `v4.channel.k8s.io` (what a 1.20
kubelet negotiates) or `v5.channel.k8s.io` (1.30+: adds closing a channel, `[255, channel]`):
every message is one byte of channel (0 stdin, 1 stdout, 2 stderr, 3 status) and the data;
the exit is a metav1.Status as JSON on channel 3 (Success, or Failure/NonZeroExitCode with the
code in details.causes), then a close frame.

What runs is decided by a handler the test gives (`(namespace, pod, container, argv) -> Popen`):
the bed's real components run behind pods (tests/testbed/real/exec.py maps a pod to its process).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from kubernetes import client

from .ingress import TestCA
from .local import BedError

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

Handler = Callable[[str, str, str, list[str]], subprocess.Popen]


class ExecRefused(BedError):  # noqa: N818 - the kubelet's answer, not a bed failure
    """The handler cannot run the command (no such container): a Failure status, like the kubelet's."""


def status(code: int, argv: list[str]) -> dict:
    """The metav1.Status a kubelet sends on channel 3 when the command ends."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {argv}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked (server → client) WebSocket frame, FIN set."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def parse_frames(buffer: bytearray) -> list[tuple[bool, int, bytes]]:
    """Complete frames at the start of `buffer` (consumed from it): (fin, opcode, unmasked payload)."""
    frames = []
    while len(buffer) >= 2:
        fin, opcode = bool(buffer[0] & 0x80), buffer[0] & 0x0F
        masked, n, at = bool(buffer[1] & 0x80), buffer[1] & 0x7F, 2
        if n == 126:
            if len(buffer) < 4:
                break
            n, at = struct.unpack(">H", buffer[2:4])[0], 4
        elif n == 127:
            if len(buffer) < 10:
                break
            n, at = struct.unpack(">Q", buffer[2:10])[0], 10
        mask = b""
        if masked:
            if len(buffer) < at + 4:
                break
            mask, at = bytes(buffer[at : at + 4]), at + 4
        if len(buffer) < at + n:
            break
        payload = bytes(buffer[at : at + n])
        if masked:
            key = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        del buffer[: at + n]
        frames.append((fin, opcode, payload))
    return frames


class Kubelet:
    """The streaming server of the bed's node: start() listens on `sock` (created in the node
    address's network namespace) and advertises itself on the Node; close() undoes both."""

    def __init__(self, api: client.ApiClient, node: str, sock: socket.socket, handler: Handler, protocols=(V4,)):
        self.core = client.CoreV1Api(api)
        self.node = node
        self.sock = sock
        self.handler = handler
        self.protocols = tuple(protocols)  # what this kubelet speaks, in its order of preference
        self.requests: list[dict] = []  # what each exec asked for (path, query, protocol), for tests
        self._work = Path(tempfile.mkdtemp(prefix="k3stack-kubelet-"))
        cert, key = TestCA("testbed kubelet CA").issue([node])
        (self._work / "tls.crt").write_bytes(cert)
        (self._work / "tls.key").write_bytes(key)
        (self._work / "tls.key").chmod(0o600)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self._work / "tls.crt", self._work / "tls.key")
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="testbed-kubelet", daemon=True)
        self._saved: dict | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> Kubelet:
        node = json.loads(self.core.read_node_status(self.node, _preload_content=False).data)
        self._saved = {
            "addresses": node["status"].get("addresses") or [],
            "daemonEndpoints": node["status"].get("daemonEndpoints") or {},
        }
        # The API server dials the first address of --kubelet-preferred-address-types (Hostname
        # first by default): the bed's node name resolves nowhere, so only the InternalIP stays.
        addresses = [a for a in self._saved["addresses"] if a["type"] == "InternalIP"]
        self._patch({"addresses": addresses, "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}})
        self._thread.start()
        return self

    def _patch(self, status: dict) -> None:
        self.core.api_client.call_api(
            *self.core.api_client.param_serialize(
                "PATCH",
                f"/api/v1/nodes/{self.node}/status",
                header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
                body={"status": status},
                auth_settings=["BearerToken"],
            )
        ).read()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._saved is not None:
            with contextlib.suppress(Exception):
                self._patch({**self._saved, "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}})
        for path in self._work.iterdir():
            path.unlink()
        self._work.rmdir()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="testbed-kubelet-conn", daemon=True).start()

    # -- one connection ---------------------------------------------------------------------------
    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        try:
            head, rest = self._read_head(conn)
            self._exec(conn, head, rest)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _read_head(conn) -> tuple[str, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("connection closed before the request head")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        return head.decode("latin-1"), rest

    def _exec(self, conn, head: str, rest: bytes) -> None:
        lines = head.split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        url = urlparse(target)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "exec":
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        _, namespace, pod, container = parts
        query = parse_qs(url.query)
        argv = query.get("command", [])
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        chosen = next((p for p in offered if p in self.protocols), None)
        if headers.get("upgrade", "").lower() != "websocket" or chosen is None or "sec-websocket-key" not in headers:
            # The kubelet also speaks SPDY; the bed does only WebSocket.
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        conn.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {chosen}\r\n\r\n"
            ).encode()
        )
        stdin = _flag(query, "input", "stdin")
        self.requests.append({"method": method, "path": url.path, "argv": argv, "protocol": chosen, "stdin": stdin})

        def send(channel: int, data: bytes) -> None:
            conn.sendall(frame(OP_BINARY, bytes([channel]) + data))

        try:
            process = self.handler(namespace, pod, container, argv)
        except (ExecRefused, OSError) as exc:
            failure = {"metadata": {}, "status": "Failure", "message": str(exc), "reason": "InternalError"}
            send(STATUS, json.dumps(failure).encode())
            conn.sendall(frame(OP_CLOSE, struct.pack(">H", 1000)))
            return
        code = self._pump(conn, process, bytearray(rest), stdin, chosen, send)
        send(STATUS, json.dumps(status(code, argv)).encode())
        with contextlib.suppress(OSError):
            conn.sendall(frame(OP_CLOSE, struct.pack(">H", 1000)))

    def _pump(self, conn, process: subprocess.Popen, buffer: bytearray, stdin: bool, protocol: str, send) -> int:
        """Shuttle bytes until the command's stdout and stderr end; returns its exit code. A client
        that goes away ends the command (its pipes break, as a container's would)."""
        outputs = {process.stdout.fileno(): STDOUT, process.stderr.fileno(): STDERR}
        to_stdin = bytearray()
        stdin_open = stdin and process.stdin is not None
        if process.stdin is not None:
            os.set_blocking(process.stdin.fileno(), False)
            if not stdin:
                process.stdin.close()
        fragments = bytearray()
        client_open, close_stdin = True, False
        while outputs:
            wait_write = [process.stdin.fileno()] if stdin_open and to_stdin else []
            reading = list(outputs) + ([conn] if client_open else [])
            ready = [conn] if client_open and conn.pending() else []
            if not ready:
                ready, writable, _ = select.select(reading, wait_write, [], 1)
            else:
                writable = []
            for fd in [r for r in ready if r is not conn]:
                data = os.read(fd, 65536)
                if data:
                    send(outputs[fd], data)
                else:
                    del outputs[fd]
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    client_open = False
                    _end(process)
                    continue
                buffer += data
                for fin, opcode, payload in parse_frames(buffer):
                    if opcode == OP_CLOSE:
                        client_open = False
                        _end(process)
                    elif opcode == OP_PING:
                        conn.sendall(frame(OP_PONG, payload))
                    elif opcode in (OP_BINARY, OP_TEXT, OP_CONT):
                        fragments += payload
                        if not fin:
                            continue
                        message, fragments = bytes(fragments), bytearray()
                        if not message:
                            continue
                        if message[0] == CLOSE and protocol == V5 and message[1:2] == bytes([STDIN]):
                            close_stdin = True  # once what is buffered is written
                        elif message[0] == STDIN and stdin_open:
                            to_stdin += message[1:]
            if writable:
                try:
                    written = os.write(process.stdin.fileno(), to_stdin[:65536])
                    del to_stdin[:written]
                except BrokenPipeError:
                    to_stdin.clear()
                    stdin_open = False
            if stdin_open and close_stdin and not to_stdin:
                process.stdin.close()
                stdin_open = False
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(OSError):
                process.stdin.close()
        return process.wait()


def _end(process: subprocess.Popen) -> None:
    """The client went away: the command's whole process group ends (its session is its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _flag(query: dict[str, list[str]], *names: str) -> bool:
    return any((query.get(n) or ["0"])[0].lower() in ("1", "true") for n in names)
