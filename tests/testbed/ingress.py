"""Traefik's part of the stack, for the test bed (no registry here ships Traefik): HTTPS
(websecure) and HTTP (web) listeners on loopback, configured from the cluster like Traefik's
Kubernetes providers are:

- routers from the Ingress objects of the watched namespaces (host + path prefix, the
  `router.entrypoints` / `router.tls` / `router.middlewares` annotations; a router whose
  middleware does not exist is not created), and from the Ingress a HelmChart's values make the
  chart create (`ingress.hosts`, `ingress.annotations`), pointed at the address the bed gives it;
- services resolved through their Endpoints, as Traefik does (it talks to pods, not ClusterIPs);
- middlewares `redirectScheme` and `basicAuth` (htpasswd users from the Secret, bcrypt);
- proxied byte for byte after the request head, so WebSocket upgrades pass like in Traefik.

The certificate is a TestCA's (Let's Encrypt's part); a test swaps in another with `use_cert`.
Every request that reaches a listener is kept in `received` (entry point, method, path, its
Authorization header, the body bytes that came with the head), so a test can prove what a client
did or did not send to a server it should not trust.
"""

from __future__ import annotations

import base64
import datetime as dt
import select
import socket
import socketserver
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3stack.kube import Kube

ANNOTATION = "traefik.ingress.kubernetes.io/"
# Traefik ≥ 2.10 serves traefik.io; older Traefik (K3s ≤ 1.26) only traefik.containo.us.
MIDDLEWARE_APIS = ("traefik.io/v1alpha1", "traefik.containo.us/v1alpha1")


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


@dataclass(frozen=True)
class Received:
    """One request as the ingress got it, before any routing or middleware (never printed by tests)."""

    entrypoint: str
    method: str
    path: str
    authorization: str = field(repr=False)
    body: bytes = field(repr=False)


@dataclass
class Route:
    host: str
    path: str
    entrypoints: tuple[str, ...]  # () = every entry point
    tls: bool
    middlewares: list[dict] = field(default_factory=list)  # Middleware specs (with "namespace")
    backend: tuple[str, int] | None = None


class Ingress:
    """HTTPS and HTTP listeners on `host` standing in for Traefik (see the module's docstring).
    `chart_backends`: (namespace, HelmChart name) → the address of what the chart would run."""

    def __init__(
        self,
        kube: Kube,
        namespaces: list[str],
        cert: tuple[bytes, bytes],
        *,
        chart_backends: dict[tuple[str, str], tuple[str, int]] | None = None,
        host: str = "127.0.0.1",
    ):
        self.kube = kube
        self.namespaces = namespaces
        self.chart_backends = dict(chart_backends or {})
        self._dir = tempfile.TemporaryDirectory(prefix="k3stack-ingress-")
        self.tls: ssl.SSLContext | None = None
        self.received: list[Received] = []
        self.use_cert(*cert)
        self.https = self._listen(host, "websecure")
        self.http = self._listen(host, "web")
        self.https_port = self.https.server_address[1]
        self.http_port = self.http.server_address[1]
        self.address = host

    def _listen(self, host: str, entrypoint: str) -> socketserver.ThreadingTCPServer:
        server = socketserver.ThreadingTCPServer((host, 0), _Handler)
        server.daemon_threads = True
        server.ingress = self  # type: ignore[attr-defined]
        server.entrypoint = entrypoint  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def use_cert(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve this certificate from now on (a test swaps in a bad one)."""
        cert_file, key_file = Path(self._dir.name, "tls.crt"), Path(self._dir.name, "tls.key")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.tls = context

    def close(self) -> None:
        for server in (self.https, self.http):
            server.shutdown()
            server.server_close()
        self._dir.cleanup()

    # -- configuration from the cluster, read per request (Traefik watches; this is simpler)
    def routes(self) -> list[Route]:
        routes: list[Route] = []
        for namespace in self.namespaces:
            for ingress in self.kube.list("networking.k8s.io/v1", "Ingress", namespace):
                annotations = ingress["metadata"].get("annotations") or {}
                for rule in ingress["spec"].get("rules") or []:
                    for path in (rule.get("http") or {}).get("paths") or []:
                        service = path["backend"]["service"]
                        route = self._route(namespace, annotations, rule.get("host", ""), path.get("path", "/"))
                        if route is not None:
                            route.backend = self._endpoint(namespace, service["name"], service["port"])
                            routes.append(route)
        for (namespace, chart_name), backend in self.chart_backends.items():
            chart = self.kube.get("helm.cattle.io/v1", "HelmChart", chart_name, namespace)
            values = yaml.safe_load((chart or {}).get("spec", {}).get("valuesContent") or "") or {}
            ingress = values.get("ingress") or {}
            if not chart or not ingress.get("enabled"):
                continue
            annotations = {k: v for k, v in (ingress.get("annotations") or {}).items() if v is not None}
            for host in ingress.get("hosts") or []:
                route = self._route(namespace, annotations, host, ingress.get("path") or "/")
                if route is not None:
                    route.backend = backend
                    routes.append(route)
        return routes

    def _route(self, namespace: str, annotations: dict[str, str], host: str, path: str) -> Route | None:
        entrypoints = tuple(
            e.strip() for e in annotations.get(ANNOTATION + "router.entrypoints", "").split(",") if e.strip()
        )
        route = Route(host, path, entrypoints, annotations.get(ANNOTATION + "router.tls", "") == "true")
        for reference in annotations.get(ANNOTATION + "router.middlewares", "").split(","):
            reference = reference.strip()
            if not reference:
                continue
            middleware = self._middleware(reference)
            if middleware is None:
                return None  # Traefik: "middleware ... does not exist", the router is not created
            route.middlewares.append(middleware)
        return route

    def _middleware(self, reference: str) -> dict | None:
        name, _, provider = reference.partition("@")
        if provider != "kubernetescrd":
            return None
        for namespace in self.namespaces:
            if name.startswith(namespace + "-"):
                for api in MIDDLEWARE_APIS:  # whichever group the cluster serves (an unserved one reads as absent)
                    obj = self.kube.get(api, "Middleware", name[len(namespace) + 1 :], namespace)
                    if obj is not None:
                        return {**obj["spec"], "namespace": namespace}
        return None

    def _endpoint(self, namespace: str, service: str, port: dict) -> tuple[str, int] | None:
        endpoints = self.kube.get("v1", "Endpoints", service, namespace) or {}
        svc = self.kube.get("v1", "Service", service, namespace) or {}
        wanted = next(
            (
                p
                for p in svc.get("spec", {}).get("ports") or []
                if p.get("name") == port.get("name") or p.get("port") == port.get("number")
            ),
            None,
        )
        for subset in endpoints.get("subsets") or []:
            for address in subset.get("addresses") or []:
                for endpoint_port in subset.get("ports") or []:
                    if wanted is None or endpoint_port.get("name") == wanted.get("name"):
                        return address["ip"], endpoint_port["port"]
        return None

    def match(self, entrypoint: str, host: str, path: str) -> Route | None:
        tls = entrypoint == "websecure"
        candidates = [
            r
            for r in self.routes()
            if r.host.lower() == host.lower()
            and path.startswith(r.path)
            and (not r.entrypoints or entrypoint in r.entrypoints)
            and r.tls == tls
        ]
        return max(candidates, key=lambda r: len(r.path), default=None)

    def basic_auth_ok(self, middleware: dict, authorization: str) -> bool:
        secret = self.kube.get("v1", "Secret", middleware["basicAuth"]["secret"], middleware["namespace"]) or {}
        users = base64.b64decode((secret.get("data") or {}).get("users", "")).decode()
        if not authorization.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            return False
        for line in users.splitlines():
            name, _, hashed = line.strip().partition(":")
            if name == user and hashed.startswith("$2"):
                return bcrypt.checkpw(password.encode(), hashed.encode())
        return False


def _answer(sock, status: int, reason: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/plain; charset=utf-8"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    sock.sendall("\r\n".join(lines).encode() + body)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        ingress: Ingress = self.server.ingress  # type: ignore[attr-defined]
        entrypoint: str = self.server.entrypoint  # type: ignore[attr-defined]
        sock = self.request
        sock.settimeout(30)
        try:
            if entrypoint == "websecure":
                sock = ingress.tls.wrap_socket(sock, server_side=True)  # type: ignore[union-attr]
            head, rest = b"", b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk or len(head) > 1 << 16:
                    return
                head += chunk
            head, rest = head.split(b"\r\n\r\n", 1)
            self._route(ingress, entrypoint, sock, head.decode("latin-1"), rest)
        except (OSError, ssl.SSLError, ValueError):
            return
        finally:
            sock.close()

    def _route(self, ingress: Ingress, entrypoint: str, sock, head: str, rest: bytes) -> None:
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
        value = {k.strip().lower(): v.strip() for k, v in headers}
        ingress.received.append(Received(entrypoint, method, target, value.get("authorization", ""), rest))
        host = value.get("host", "").rsplit(":", 1)[0] if "]" not in value.get("host", "") else value["host"]
        route = ingress.match(entrypoint, host, target.split("?")[0])
        if route is None:
            _answer(sock, 404, "Not Found", b"404 page not found\n")
            return
        drop = set()
        for middleware in route.middlewares:
            if "redirectScheme" in middleware:
                spec = middleware["redirectScheme"]
                port = f":{spec['port']}" if spec.get("port") else ""
                permanent = spec.get("permanent", False)
                status = (301 if method in ("GET", "HEAD") else 308) if permanent else 302
                location = f"{spec.get('scheme', 'https')}://{host}{port}{target}"
                _answer(sock, status, "Redirect", b"Moved\n", {"Location": location})
                return
            if "basicAuth" in middleware:
                if not ingress.basic_auth_ok(middleware, value.get("authorization", "")):
                    realm = middleware["basicAuth"].get("realm") or "traefik"
                    _answer(
                        sock, 401, "Unauthorized", b"401 Unauthorized\n", {"WWW-Authenticate": f'Basic realm="{realm}"'}
                    )
                    return
                if middleware["basicAuth"].get("removeHeader"):
                    drop.add("authorization")
        if route.backend is None:
            _answer(sock, 503, "Service Unavailable", b"no available server\n")
            return
        try:
            backend = socket.create_connection(route.backend, timeout=10)
        except OSError:
            _answer(sock, 502, "Bad Gateway", b"Bad Gateway\n")
            return
        upgrade = "upgrade" in value.get("connection", "").lower()
        kept = [
            (k, v) for k, v in headers if k.strip().lower() not in drop | ({"connection"} if not upgrade else set())
        ]
        forwarded = [*kept, ("X-Forwarded-Proto", "https" if entrypoint == "websecure" else "http")]
        forwarded += [("X-Forwarded-Host", value.get("host", "")), ("X-Forwarded-For", self.client_address[0])]
        if not upgrade:
            forwarded.append(("Connection", "close"))  # one request per backend connection
        text = "\r\n".join([request_line, *(f"{k.strip()}: {v.strip()}" for k, v in forwarded), "", ""])
        with backend:
            backend.sendall(text.encode("latin-1") + rest)
            _pump(sock, backend)


def _pump(client, backend, idle: float = 120) -> None:
    """Copy bytes both ways until one side closes (or nothing moves for `idle` seconds)."""
    peers = {client: backend, backend: client}
    while True:
        ready = [s for s in (client,) if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select(list(peers), [], [], idle)
            if not ready:
                return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)
