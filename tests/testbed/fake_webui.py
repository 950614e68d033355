"""Test stand-ins for what `inv smoke` talks to besides Ollama, speaking the real protocols:

- FakeWebUI: Open WebUI's /health, /health/db, /ready (404 on images without it), /api/version,
  POST /api/v1/auths/signin → token, GET /api/models with the bearer token, and the Engine.IO
  polling handshake on /ws/socket.io/.
- FakeNetdata: the dashboard behind Traefik basic auth (401 + WWW-Authenticate without it).
- Ingress: Traefik's part — HTTPS on loopback routing by Host (SNI certificate from a test CA
  made here with `cryptography`), and plain HTTP answering with a redirect to HTTPS.

Each takes injected faults (wrong version, missing models, websocket refused, no redirect,
Netdata without auth, a bad certificate, latency per path) as plain attributes.
FakeStack puts them all together behind a stack deployed to the test bed, for `inv smoke`.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import secrets
import socket
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3stack import deploy as stack
from k3stack import settings
from k3stack import smoke as sm
from k3stack.console import Console
from k3stack.kube import Kube

from .fake_ollama import FakeOllama, JsonHandler, serve

Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, data) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


class FakeWebUI:
    def __init__(self, *, version: str = "0.11.0", email: str = "admin@example.test", password: str = "", models=()):
        self.version = version
        self.email = email
        self.password = password
        self.models = list(models)  # ids /api/models lists (what Open WebUI sees in Ollama)
        self.has_ready = True  # False: an image without /ready (404), smoke falls back to /health/db
        self.db_ok = True
        self.websocket = True
        self.latency: dict[str, float] = {}
        self.tokens: set[str] = set()

    def answer(self, method: str, path: str, headers, body: bytes) -> Answer:
        route = path.split("?")[0]
        time.sleep(self.latency.get(route, 0))
        if route == "/health":
            return _json(200, {"status": True})
        if route == "/health/db":
            return _json(200, {"status": True}) if self.db_ok else _json(500, {"detail": "database unreachable"})
        if route == "/ready":
            if not self.has_ready:
                return _json(404, {"detail": "Not Found"})
            return _json(200, {"status": True}) if self.db_ok else _json(503, {"detail": "database not ready"})
        if route == "/api/version":
            return _json(200, {"version": self.version, "deployment_id": "test"})
        if route == "/api/v1/auths/signin" and method == "POST":
            sent = json.loads(body or b"{}")
            if sent.get("email", "").lower() != self.email.lower() or sent.get("password") != self.password:
                return _json(400, {"detail": "The email or password provided is incorrect. Please check for typos."})
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            return _json(200, {"token": token, "token_type": "Bearer", "email": self.email, "role": "admin"})
        if route == "/api/models":
            if headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
                return _json(401, {"detail": "Not authenticated"})
            return _json(200, {"data": [{"id": m, "name": m, "owned_by": "ollama"} for m in self.models]})
        if route in ("/ws/socket.io/", "/ws/socket.io"):
            if not self.websocket:
                return 403, {"Content-Type": "text/plain"}, b"Forbidden"
            sid = secrets.token_urlsafe(15)
            handshake = {"sid": sid, "upgrades": ["websocket"], "pingInterval": 25000, "pingTimeout": 20000}
            return 200, {"Content-Type": "text/plain; charset=UTF-8"}, b"0" + json.dumps(handshake).encode()
        return _json(404, {"detail": "Not Found"})

    def serve(self, sock: socket.socket):
        """Plain HTTP on `sock` (behind pods: the in-cluster Service)."""
        return serve(sock, RoutingHandler, {"": self})


class FakeNetdata:
    def __init__(self, user: str = "admin", password: str = ""):
        self.user = user
        self.password = password
        self.require_auth = True  # False: the fault "dashboard open to anyone"
        self.latency = 0.0

    def answer(self, method: str, path: str, headers, body: bytes) -> Answer:
        time.sleep(self.latency)
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.require_auth and headers.get("Authorization") != expected:
            return (
                401,
                {"WWW-Authenticate": 'Basic realm="traefik"', "Content-Type": "text/plain"},
                b"401 Unauthorized\n",
            )
        return _json(200, {"version": "v2.11.0", "hostname": "netdata-parent"})


class RedirectToHttps:
    """Traefik's `web` entry point: everything answers 308 to the same URL on HTTPS."""

    def __init__(self, https_port: int = 443):
        self.https_port = https_port
        self.redirect = True  # False: the fault "plain HTTP served as is"

    def answer(self, method: str, path: str, headers, body: bytes) -> Answer:
        if not self.redirect:
            return 200, {"Content-Type": "text/html"}, b"<html>Open WebUI</html>"
        host = headers.get("Host", "").split(":")[0]
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return 308, {"Location": f"https://{host}{port}{path}", "Content-Type": "text/plain"}, b"Permanent Redirect"


class RoutingHandler(JsonHandler):
    """Answers with the app registered for the request's Host ("" = any host); TLS when the
    server has a `tls` context (the handshake runs in the request's thread)."""

    timeout = 10

    def setup(self) -> None:
        tls = getattr(self.server, "tls", None)
        if tls is not None:
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def _dispatch(self) -> None:
        body = self.body()
        routes = self.server.app  # type: ignore[attr-defined]
        app = routes.get(self.headers.get("Host", "").split(":")[0]) or routes.get("")
        if app is None:
            self.send(404, b"404 page not found", {"Content-Type": "text/plain"})
            return
        status, headers, payload = app.answer(self.command, self.path, self.headers, body)
        self.send(status, payload, headers)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._dispatch()


class TestCA:
    """A certificate authority of our own; `issuer` may say "(STAGING)" like Let's Encrypt's."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "k3stack test CA"):
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, hosts: list[str], *, days: int = 90, expired: bool = False) -> tuple[bytes, bytes]:
        """A server certificate (PEM) and key (PEM) for `hosts`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start = now - dt.timedelta(days=days + 2) if expired else now - dt.timedelta(hours=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days) if expired else now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.pem, key_pem


class Ingress:
    """HTTPS and HTTP listeners on loopback standing in for Traefik: `routes` maps host → app."""

    def __init__(self, routes: dict, cert: tuple[bytes, bytes], host: str = "127.0.0.1"):
        self._dir = tempfile.TemporaryDirectory(prefix="k3stack-ingress-")
        self.https = serve(_listen(host), RoutingHandler, routes)
        self.https_port = self.https.server_address[1]
        self.redirect = RedirectToHttps(self.https_port)
        self.http = serve(_listen(host), RoutingHandler, {"": self.redirect})
        self.http_port = self.http.server_address[1]
        self.address = host
        self.use_cert(*cert)

    def use_cert(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve this certificate from now on (a test swaps in a bad one)."""
        cert_file, key_file = Path(self._dir.name, "tls.crt"), Path(self._dir.name, "tls.key")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.https.tls = context  # type: ignore[attr-defined]

    def close(self) -> None:
        for server in (self.https, self.http):
            server.shutdown()
            server.server_close()
        self._dir.cleanup()


def _listen(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    return sock


@dataclass
class FakeStack:
    """The stack deployed for real to the test bed's API server (own namespaces), with test
    Ollama and Open WebUI behind its Services, an ingress on loopback with a test CA's
    certificate, and a SmokeConfig that reaches it all without DNS."""

    kube: Kube
    config: sm.SmokeConfig
    ollama: FakeOllama
    webui: FakeWebUI
    netdata: FakeNetdata
    ingress: Ingress
    ca: TestCA
    servers: list

    CHAT = "chat.smoke.test"
    MONITOR = "monitor.smoke.test"

    @classmethod
    def deploy(cls, bed, workdir: Path, *, models: list[str], admin_password: str, netdata_password: str) -> FakeStack:
        """`bed`: the `kube` fixture's KubeBed. Models are already on the test Ollama."""
        suffix = uuid.uuid4().hex[:6]
        environ = {
            "DOMAIN": "smoke.test",
            "ACME_EMAIL": "ops@smoke.test",
            "STACK_NAMESPACE": f"llm-{suffix}",
            "MONITORING_NAMESPACE": f"mon-{suffix}",
            "OLLAMA_MODELS": ",".join(models),
            "WEBUI_ADMIN_PASSWORD": admin_password,
            "NETDATA_PASSWORD": netdata_password,
        }
        values = settings.load(env_dir=Path("/nonexistent"), environ=environ)
        kube = Kube(str(bed.kubeconfig))
        ns = values["STACK_NAMESPACE"]
        ollama = FakeOllama({m: [1000, 10] for m in models})
        for model in models:
            ollama.install(model)
        webui = FakeWebUI(email=values["WEBUI_ADMIN_EMAIL"], password=admin_password, models=models)
        # Routes first: the pods the deploy creates get the test servers' addresses.
        servers = [
            ollama.serve(bed.serve_behind_pods(ns, {"app.kubernetes.io/name": "ollama"}, 11434)),
            webui.serve(bed.serve_behind_pods(ns, {"app.kubernetes.io/name": "open-webui"}, 8080)),
        ]
        plan = stack.make_plan(values, stack.read_secret_from(kube))
        stack.deploy(kube, plan, Console(stream=io.StringIO(), interactive=False), timeout=90)

        ca = TestCA()
        netdata = FakeNetdata(values["NETDATA_USER"], netdata_password)
        ingress = Ingress({cls.CHAT: webui, cls.MONITOR: netdata}, ca.issue([cls.CHAT, cls.MONITOR]))
        https, http = ("127.0.0.1", ingress.https_port), ("127.0.0.1", ingress.http_port)
        config = sm.SmokeConfig.from_settings(
            values,
            plan.secrets.values,
            ca_bundle=str(ca.write(workdir / "ca.pem")),
            connect_to={
                (cls.CHAT, 443): https,
                (cls.CHAT, 80): http,
                (cls.MONITOR, 443): https,
                (cls.MONITOR, 80): http,
            },
            deadline=5,
            interval=0.3,
        )
        return cls(kube, config, ollama, webui, netdata, ingress, ca, servers)

    def close(self) -> None:
        self.ingress.close()
        for server in self.servers:
            server.shutdown()
        for namespace in (self.config.stack_namespace, self.config.monitoring_namespace):
            self.kube.delete("v1", "Namespace", namespace)
