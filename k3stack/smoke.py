"""`inv smoke`: proof that the stack works, end to end. Every check runs at once; those that
become true some time after a deploy (pods, certificates, sign-in) are retried until a common
deadline. Each ends as pass/fail with its time and, on failure, the reason and a hint.

Three kinds: cluster (nodes, workloads, volumes, the Netdata chart), in-cluster through the API
server's service proxy (Ollama, Open WebUI), and public through the real ingress URLs exactly as
a browser goes (TLS verified, redirect, version, admin sign-in, websocket, Netdata's auth).
`connect_to` sends a host:port elsewhere without DNS (curl's --connect-to / --resolve).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import websocket  # websocket-client (also what the kubernetes client streams with)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from . import kinds, rollout
from .console import Console
from .errors import K3stackError, command
from .kube import Kube, KubeError
from .manifests import image_tag
from .ollama import normalise
from .report import CheckResult, SmokeReport
from .retry import retrying

GROUPS = ("cluster", "in-cluster", "public")
# Open WebUI's Socket.IO is websocket-only when ENABLE_WEBSOCKET_SUPPORT=true: no polling first.
WEBSOCKET_PATH = "/ws/socket.io/?EIO=4&transport=websocket"
NETDATA_PATH = "/api/v1/info"
# What Let's Encrypt's staging issuers are called ("(STAGING) Let's Encrypt", "(STAGING) Ersatz Edamame
# E1"). Only for hints: anyone can put it in a name, so trust never depends on it.
STAGING_MARK = "(STAGING)"
TRAEFIK_DEFAULT = "TRAEFIK DEFAULT CERT"
# `--insecure` trusts these roots and nothing else (not the system's, not SMOKE_CA_BUNDLE): the file
# ships with k3stack, and is refused unless it holds exactly the certificates pinned here (SHA-256 of
# the DER; where they come from: the file's header).
STAGING_ROOTS = Path(__file__).with_name("certs") / "letsencrypt-staging-roots.pem"
STAGING_ROOT_FINGERPRINTS = {
    "e70570a989f8565aabdf7cae27abd1621872d6a3f811e3fef27e3dba02912198": "(STAGING) Pretend Pear X1",
    "9b2a339fe6a3e85585c4cd75536cb8c1cf7cd603b9a64bec2521858ae48da85d": "(STAGING) Bogus Broccoli X2",
}
# OpenSSL's verify codes for "no path to a trusted root" (as opposed to expired, wrong host, ...).
UNTRUSTED_CHAIN = {2, 18, 19, 20, 21}


class SmokeConfigError(K3stackError, ValueError):
    """Smoke's settings or flags cannot work together, or a shipped trust file was altered."""


def staging_roots() -> str:
    """The pinned staging roots as PEM text (for SSLContext.load_verify_locations(cadata=...)).
    Raises SmokeConfigError when STAGING_ROOTS holds anything but exactly the pinned certificates."""
    try:
        certs = x509.load_pem_x509_certificates(STAGING_ROOTS.read_bytes())
    except (OSError, ValueError) as exc:
        raise SmokeConfigError(
            f"Let's Encrypt's staging roots ({STAGING_ROOTS}) cannot be read: {exc}",
            "restore the file from the k3stack release (git checkout -- k3stack/certs)",
        ) from None
    found = {hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest(): c for c in certs}
    if len(certs) != len(found) or set(found) != set(STAGING_ROOT_FINGERPRINTS):
        unknown = sorted(set(found) - set(STAGING_ROOT_FINGERPRINTS))
        raise SmokeConfigError(
            f"{STAGING_ROOTS} does not hold exactly Let's Encrypt's pinned staging roots"
            + (f" (unknown SHA-256 {', '.join(unknown)})" if unknown else ""),
            "restore the file from the k3stack release (git checkout -- k3stack/certs); --insecure trusts nothing else",
        )
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


class CheckFailed(Exception):  # noqa: N818 - a check's verdict, not an error of the program
    """The check saw something wrong. `final`: retrying cannot help (e.g. a refused password)."""

    def __init__(self, reason: str, hint: str = "", *, final: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.final = final


@dataclass(frozen=True)
class SmokeConfig:
    """What the checks need; `from_settings` builds it from Settings + the stack's secrets."""

    stack_namespace: str
    monitoring_namespace: str
    chat_host: str
    monitor_host: str
    models: tuple[str, ...]
    webui_version: str  # the deployed image tag, e.g. v0.11.0
    admin_email: str
    admin_password: str = field(repr=False)
    netdata_user: str = "admin"
    netdata_password: str = field(default="", repr=False)
    acme_staging: bool = False
    insecure: bool = False  # trust Let's Encrypt's staging roots (STAGING_ROOTS) instead, and only them
    ca_bundle: str | None = None  # trust these CAs instead of the system's
    connect_to: Mapping[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    https_port: int = 443
    http_port: int = 80
    deadline: float = 120  # seconds: how long eventually consistent checks keep trying
    interval: float = 2  # seconds between two tries of a failing check
    request_timeout: float = 10
    ollama_service: tuple[str, int] = ("ollama", 11434)
    webui_service: tuple[str, int] = ("open-webui", 8080)

    @classmethod
    def from_settings(cls, settings, secret_values: Mapping[str, str], **overrides) -> SmokeConfig:
        """`secret_values`: the resolved stack secrets (k3stack.secrets.resolve(...).values).
        SMOKE_TIMEOUT, SMOKE_CA_BUNDLE and SMOKE_RESOLVE are read when the settings have them;
        `overrides` (from task flags) win over everything."""
        optional = settings.values
        values = {
            "deadline": float(optional.get("SMOKE_TIMEOUT") or 120),
            "ca_bundle": optional.get("SMOKE_CA_BUNDLE") or None,
            "connect_to": parse_connect_to(s for s in (optional.get("SMOKE_RESOLVE") or "").split(",") if s.strip()),
            "stack_namespace": settings["STACK_NAMESPACE"],
            "monitoring_namespace": settings["MONITORING_NAMESPACE"],
            "chat_host": settings["CHAT_HOST"],
            "monitor_host": settings["MONITOR_HOST"],
            "models": tuple(settings.models),
            "webui_version": image_tag(settings["OPEN_WEBUI_IMAGE"]),
            "admin_email": settings["WEBUI_ADMIN_EMAIL"],
            "admin_password": secret_values.get("WEBUI_ADMIN_PASSWORD", ""),
            "netdata_user": settings["NETDATA_USER"],
            "netdata_password": secret_values.get("NETDATA_PASSWORD", ""),
            "acme_staging": settings.flag("ACME_STAGING"),
        }
        return cls(**{**values, **overrides})

    def __post_init__(self):
        if self.insecure and self.ca_bundle:
            raise SmokeConfigError(
                "--insecure trusts only Let's Encrypt's staging roots, and a CA bundle was given too "
                f"({self.ca_bundle})",
                "drop --ca-bundle (or SMOKE_CA_BUNDLE) for a staging run, or --insecure to trust the bundle",
            )

    def secrets(self) -> list[str]:
        """Values to register with Console.add_secrets before anything is printed."""
        return [s for s in (self.admin_password, self.netdata_password) if s]


def parse_connect_to(specs: Iterable[str]) -> dict[tuple[str, int], tuple[str, int]]:
    """curl's forms: HOST:PORT:ADDR (--resolve) and HOST:PORT:ADDR:PORT2 (--connect-to)."""
    result = {}
    for spec in specs:
        parts = spec.strip().split(":")
        if len(parts) == 3:
            host, port, addr = parts
            result[(host, int(port))] = (addr, int(port))
        elif len(parts) == 4:
            host, port, addr, port2 = parts
            result[(host, int(port))] = (addr, int(port2))
        else:
            raise ValueError(f"{spec!r}: expected HOST:PORT:ADDRESS or HOST:PORT:ADDRESS:PORT")
    return result


# -- HTTP as a browser sees it ----------------------------------------------------------------------
@dataclass(frozen=True)
class CertInfo:
    """What a served TLS certificate says: `issuer` and `subject` as "organisation / common name" (the
    RFC 4514 string when they have neither), `not_after` (UTC), `hosts` its DNS subjectAltNames."""

    issuer: str
    subject: str
    not_after: dt.datetime
    hosts: tuple[str, ...]

    @property
    def days_left(self) -> int:
        """Whole days until `not_after`, rounded down: 0 in the last 24 hours, negative once expired."""
        return (self.not_after - dt.datetime.now(dt.UTC)).days

    @property
    def staging(self) -> bool:
        """Whether its issuer's name says "(STAGING)", as Let's Encrypt's staging issuers' do. A name
        anyone can give a certificate: used for hints, never for trust (see _verifying_context)."""
        return STAGING_MARK in self.issuer

    @classmethod
    def from_der(cls, der: bytes) -> CertInfo:
        """A DER certificate's CertInfo (no subjectAltName extension: no hosts). Raises ValueError when
        `der` is not a certificate (cryptography's parser)."""
        cert = x509.load_der_x509_certificate(der)

        def name(n: x509.Name) -> str:
            parts = [
                a.value
                for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME)
                for a in n.get_attributes_for_oid(oid)
            ]
            return " / ".join(str(p) for p in parts) or n.rfc4514_string()

        try:
            sans = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            hosts = tuple(sans.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            hosts = ()
        return cls(name(cert.issuer), name(cert.subject), cert.not_valid_after_utc, hosts)

    def matches(self, host: str) -> bool:
        """Whether the certificate names `host`, ignoring case: a subjectAltName equal to it, or a
        wildcard `*.rest` where `rest` is `host` without its first label (a wildcard covers one label
        only, RFC 6125 6.4.3)."""
        for pattern in self.hosts:
            if pattern.lower() == host.lower():
                return True
            if pattern.startswith("*.") and host.lower().split(".", 1)[-1] == pattern[2:].lower():
                return True
        return False


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as Browser.request got it: `headers` with lower-case names, the whole `body`,
    and `cert` the certificate the server presented (None over plain HTTP)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    cert: CertInfo | None = None

    def json(self):
        """The body parsed as JSON; None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class _Connection(http.client.HTTPConnection):
    """HTTP(S) to `host` whose TCP connection goes to `address` (no DNS when overridden). With `tls`
    (always a verifying context, see Browser), nothing is written before the handshake has verified
    the server: http.client sends the request only once connect() returned."""

    def __init__(self, host: str, port: int, address: tuple[str, int], tls: ssl.SSLContext | None, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls = tls
        self.default_port = 443 if tls else 80  # Host header without the port, as browsers send it
        self.peer_der: bytes | None = None

    def connect(self) -> None:
        sock = socket.create_connection(self.address, self.timeout)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)  # raises unless verified
            except BaseException:
                sock.close()
                raise
            self.peer_der = sock.getpeercert(binary_form=True)
        self.sock = sock


def _verifying_context(config: SmokeConfig) -> ssl.SSLContext:
    """The one TLS context every public request and websocket uses: the certificate must chain to
    the trust store and name the host. The trust store: Let's Encrypt's pinned staging roots and
    nothing else with `insecure`; else `ca_bundle`, else the system's CAs."""
    if config.insecure:
        context = ssl.create_default_context(cadata=staging_roots())
    else:
        context = ssl.create_default_context(cafile=config.ca_bundle)
    # Never loosened: a credential goes only where this context has verified the server.
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    return context


class Browser:
    """Requests to the public URLs, every one over the same verifying TLS context (see
    _verifying_context): a server whose certificate does not verify never receives a byte of a
    request — no header, no body, no credential. Only `peek_cert` connects without verifying, to
    explain a failure, and it writes nothing after the handshake."""

    def __init__(self, config: SmokeConfig):
        self.config = config
        self._context = _verifying_context(config)

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, body: dict | None = None
    ) -> Answer:
        """One request as a browser sends it: to the URL's host and port (default `https_port` or
        `http_port`; `connect_to` may send the connection elsewhere, the Host header and TLS name stay),
        TLS verified (see the class) before anything is sent, `body` sent as JSON, `headers` over the
        default User-Agent. No redirect is followed and nothing is retried here. Returns the Answer
        whatever its status. Raises CheckFailed when the certificate does not verify (the reason says
        what is served and why; final with --insecure when it does not chain to the staging roots),
        and when the host cannot be reached or answers no HTTP."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        if not tls and (body is not None or any(k.lower() == "authorization" for k in headers or {})):
            raise ValueError(f"{method} {url}: credentials go over verified https only")  # a bug in a check
        port = parts.port or (self.config.https_port if tls else self.config.http_port)
        host = parts.hostname or ""
        address = self.config.connect_to.get((host, port), (host, port))
        connection = _Connection(host, port, address, self._context if tls else None, self.config.request_timeout)
        payload = json.dumps(body).encode() if body is not None else None
        all_headers = {"User-Agent": "k3stack-smoke", **({"Content-Type": "application/json"} if payload else {})}
        try:
            connection.request(
                method,
                parts.path + (f"?{parts.query}" if parts.query else ""),
                payload,
                {**all_headers, **(headers or {})},
            )
            response = connection.getresponse()
            answer = Answer(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
                CertInfo.from_der(connection.peer_der) if connection.peer_der else None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise self._bad_cert(host, address, exc) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CheckFailed(f"{method} {url}: {exc or type(exc).__name__}", _unreachable_hint(host)) from None
        finally:
            connection.close()
        return answer

    def websocket(self, url: str) -> websocket.WebSocket:
        """A WebSocket to `url` (wss://) over the same verifying TLS context as `request` (the upgrade
        is sent only after the handshake verified the server), sent with the Origin a browser on that
        host sends (Socket.IO checks it against CORS_ALLOW_ORIGIN)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or self.config.https_port
        address = self.config.connect_to.get((host, port), (host, port))
        try:
            raw = socket.create_connection(address, self.config.request_timeout)
        except OSError as exc:
            raise CheckFailed(f"GET {url}: {exc or type(exc).__name__}", _unreachable_hint(host)) from None
        try:
            sock = self._context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise self._bad_cert(host, address, exc) from None
        except OSError as exc:
            raw.close()
            raise CheckFailed(f"GET {url}: {exc or type(exc).__name__}", _unreachable_hint(host)) from None
        try:
            return websocket.create_connection(
                url, socket=sock, timeout=self.config.request_timeout, origin=f"https://{host}", suppress_origin=False
            )
        except websocket.WebSocketBadStatusException as exc:
            sock.close()
            raise CheckFailed(
                f"WebSocket upgrade on {parts.path} refused: HTTP {exc.status_code} "
                f"{(exc.resp_body or b'').decode(errors='replace')[:80]!r}",
                "Open WebUI's Socket.IO is websocket-only: whatever is between the browser and Open WebUI (a "
                "proxy, a middleware on the Ingress) must pass WebSocket upgrades on /ws/",
            ) from None
        except (OSError, websocket.WebSocketException) as exc:
            sock.close()
            raise CheckFailed(f"WebSocket {url}: {exc or type(exc).__name__}", _unreachable_hint(host)) from None

    def _bad_cert(self, host: str, address: tuple[str, int], exc: ssl.SSLCertVerificationError) -> CheckFailed:
        served = self.peek_cert(host, address)
        what = f"issuer {served.issuer}, for {', '.join(served.hosts) or served.subject}" if served else "unreadable"
        problem = exc.verify_message or exc.reason
        reason = f"certificate for {host} not valid: {problem} ({what})"
        if self.config.insecure and exc.verify_code in UNTRUSTED_CHAIN:
            named = served is not None and served.staging
            return CheckFailed(
                f"--insecure accepts only certificates of the Let's Encrypt staging CA; {host} serves one that "
                f"does not chain to its staging roots: {problem} ({what})",
                (
                    "the certificate only calls itself (STAGING): it is not from Let's Encrypt, whose staging "
                    f"roots ({', '.join(STAGING_ROOT_FINGERPRINTS.values())}) are all --insecure trusts"
                    if named
                    else "drop --insecure: a production or self-made certificate must validate on its own "
                    "(--ca-bundle for a private CA)"
                ),
                final=True,
            )
        if served and served.staging and self.config.acme_staging:
            return CheckFailed(
                reason,
                "ACME_STAGING=true: staging certificates are untrusted by design; pass --insecure (staging CA "
                "only) or switch ACME_STAGING off",
            )
        if served and served.staging:
            return CheckFailed(
                reason,
                "ACME_STAGING is off but Traefik still serves a staging certificate: it keeps certificates in "
                "acme.json until they near expiry; remove the staging ones there and restart Traefik",
            )
        if served and TRAEFIK_DEFAULT in served.subject.upper():
            return CheckFailed(
                reason,
                "Traefik still serves its default certificate: Let's Encrypt has not issued one yet (DNS of "
                "the host → the server? port 80 reachable from the internet? Traefik's log says why)",
            )
        return CheckFailed(
            reason,
            "the certificate is not from a trusted CA for this host name; check the Traefik certificate "
            "resolver (ACME_RESOLVER) and the ingress's TLS host",
        )

    def peek_cert(self, host: str, address: tuple[str, int]) -> CertInfo | None:
        """The certificate served, without judging it (to explain why verification failed): a TLS
        handshake and nothing else — no request is written on this connection."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection(address, self.config.request_timeout) as raw,
                context.wrap_socket(raw, server_hostname=host) as sock,
            ):
                der = sock.getpeercert(binary_form=True)
        except OSError:
            return None
        return CertInfo.from_der(der) if der else None


def _unreachable_hint(host: str) -> str:
    return (
        f"does {host} resolve to the server, and are ports 80/443 open to it? (`--resolve "
        f"{host}:443:ADDRESS` tests without DNS)"
    )


# -- the checks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One check: `name` as shown, `group` (one of GROUPS, for --only), and `run`, which returns what
    it saw (the detail of a pass) or raises CheckFailed."""

    name: str
    group: str
    run: Callable[[], str]  # returns what it saw; raises CheckFailed


class Checks:
    """The checks of one smoke run, as bound methods over one config and cluster."""

    def __init__(self, kube: Kube, config: SmokeConfig):
        self.kube = kube
        self.config = config
        self.browser = Browser(config)
        self._token: str | None = None
        self._signing_in = threading.Lock()

    def all(self) -> list[Check]:
        """Every check in report order: 4 cluster, 4 in-cluster, 6 public."""
        c = self.config
        return [
            Check("nodes Ready", "cluster", self.nodes_ready),
            Check("workloads available", "cluster", self.workloads_available),
            Check("volumes Bound", "cluster", self.volumes_bound),
            Check("netdata chart installed", "cluster", self.helm_charts),
            Check("ollama API", "in-cluster", self.ollama_version),
            Check("ollama models present", "in-cluster", self.ollama_models),
            Check("open-webui /health", "in-cluster", self.webui_health),
            Check("open-webui ready", "in-cluster", self.webui_ready),
            Check(f"https://{c.chat_host}/health + certificate", "public", self.https_health),
            Check(f"http://{c.chat_host} redirects to https", "public", self.http_redirect),
            Check("open-webui version", "public", self.webui_version),
            Check("admin sign-in lists models", "public", self.signin_models),
            Check("websocket handshake", "public", self.websocket),
            Check(f"https://{c.monitor_host} basic auth", "public", self.netdata_auth),
        ]

    @property
    def namespaces(self) -> tuple[str, str]:
        """(stack namespace, monitoring namespace): where the cluster checks look."""
        return self.config.stack_namespace, self.config.monitoring_namespace

    # -- cluster
    def nodes_ready(self) -> str:
        """Proves every node's kubelet reports Ready (its Ready condition is True). Fails when the cluster
        has no nodes or a node is not Ready (naming the condition's reason)."""
        nodes = self.kube.list("v1", "Node")
        if not nodes:
            raise CheckFailed("the cluster has no nodes", f"is K3s running? {command('bootstrap')}")
        bad = []
        for node in nodes:
            ready = next((c for c in node.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), {})
            if ready.get("status") != "True":
                bad.append(f"{node['metadata']['name']} ({ready.get('reason') or 'no Ready condition'})")
        if bad:
            first = bad[0].split(" ")[0]
            raise CheckFailed(
                f"not Ready: {', '.join(bad)}",
                f"look at the node: `kubectl describe node {first}`; on it, `journalctl -u k3s`",
            )
        return f"{len(nodes)} node(s) Ready"

    def workloads_available(self) -> str:
        """Proves every Deployment, StatefulSet and DaemonSet in both namespaces is rolled out and
        available, judged as deploy's wait judges it (k3stack.readiness, after `kubectl rollout status`).
        All workloads there count, not only k3stack's. Fails when there are none or one is not done."""
        # The workloads whose readiness the object alone tells (a HelmChart's is its Job's).
        statuses = {k.kind: k.status for k in kinds.KINDS if k.waited and k.status and k.api_version == "apps/v1"}
        seen, bad = 0, []
        for namespace in self.namespaces:
            for kind, judge in statuses.items():
                for obj in self.kube.list("apps/v1", kind, namespace):
                    seen += 1
                    status = judge(obj)
                    if not status.done:
                        bad.append(f"{kind.lower()}/{obj['metadata']['name']} ({namespace}): {status.message}")
        if not seen:
            raise CheckFailed(f"no workloads in {', '.join(self.namespaces)}", f"deploy the stack: {command('deploy')}")
        if bad:
            raise CheckFailed(
                "; ".join(bad), f"{command('status')} shows each workload; {command('deploy')} explains a stuck rollout"
            )
        return f"{seen} workload(s) available"

    def volumes_bound(self) -> str:
        """Proves every PersistentVolumeClaim in both namespaces is Bound (its data has a volume). Fails
        when there are none or one is not Bound (Pending, Lost)."""
        claims = [c for ns in self.namespaces for c in self.kube.list("v1", "PersistentVolumeClaim", ns)]
        if not claims:
            raise CheckFailed(
                f"no PersistentVolumeClaims in {', '.join(self.namespaces)}", f"deploy the stack: {command('deploy')}"
            )
        bad = [
            f"{c['metadata']['name']} ({c['metadata']['namespace']}) {c.get('status', {}).get('phase', 'Pending')}"
            for c in claims
            if c.get("status", {}).get("phase") != "Bound"
        ]
        if bad:
            raise CheckFailed(
                f"not Bound: {', '.join(bad)}",
                "local-path binds a volume when its pod is scheduled; `kubectl describe pvc NAME` shows the "
                "provisioner's events",
            )
        return f"{len(claims)} volume(s) Bound"

    def helm_charts(self) -> str:
        """Proves every HelmChart in the monitoring namespace (Netdata's) is installed: its install Job
        completed, as rollout.Waiter judges it. Fails when there is none or one is not done; final when
        one has failed (the chart's failurePolicy is abort: it stays failed until a person acts)."""
        namespace = self.config.monitoring_namespace
        charts = self.kube.list("helm.cattle.io/v1", "HelmChart", namespace)
        if not charts:
            raise CheckFailed(f"no HelmChart in {namespace}", f"deploy the stack: {command('deploy')}")
        waiter = rollout.Waiter(self.kube)
        done, bad, failed = [], [], False
        jobs = []
        for chart in charts:
            name = chart["metadata"]["name"]
            target = rollout.Target("helm.cattle.io/v1", "HelmChart", namespace, name)
            status = waiter.status(target)
            (done if status.done else bad).append(f"{name}: {status.message}")
            if not status.done:
                jobs.append((chart.get("status") or {}).get("jobName") or f"helm-install-{name}")
            failed = failed or status.failed
        if bad:
            logs = "; ".join(f"`kubectl -n {namespace} logs job/{job}`" for job in jobs)
            raise CheckFailed(
                "; ".join(bad),
                f"the install job's log says why: {logs}",
                final=failed,  # failurePolicy abort: a failed install stays failed until a person acts
            )
        return "; ".join(done)

    # -- in-cluster, through the API server's service proxy
    def _proxy_get(self, service: tuple[str, int], path: str) -> tuple[int, dict | None, str]:
        name, port = service
        try:
            response = self.kube.proxy(
                "GET", self.config.stack_namespace, name, port, path, timeout=self.config.request_timeout
            )
        except KubeError as exc:
            raise CheckFailed(str(exc), "is the cluster reachable? (`--kubeconfig`, `--context`)") from None
        data = response.json()
        return response.status, data if isinstance(data, dict) else None, response.message()

    def _missing(self, listed: set[str]) -> list[str]:
        """Configured models not in `listed` (both sides normalised: `mistral` is `mistral:latest`)."""
        return [m for m in (normalise(n) for n in self.config.models) if m not in listed]

    def ollama_version(self) -> str:
        """Proves Ollama's API answers inside the cluster: GET /api/version through the API server's
        service proxy returns a version (the Service has a ready endpoint). Fails on any other answer."""
        status, data, message = self._proxy_get(self.config.ollama_service, "api/version")
        if status != 200 or not data or "version" not in data:
            raise CheckFailed(
                f"Ollama /api/version: HTTP {status} {message}",
                f"is Ollama ready? {command('status')}; `kubectl -n {self.config.stack_namespace} logs deploy/ollama`",
            )
        return f"Ollama {data['version']}"

    def ollama_models(self) -> str:
        """Proves every configured model (OLLAMA_MODELS, compared in /api/tags's normalised form) is on
        Ollama's volume. Fails when /api/tags does not answer or a model is missing."""
        status, data, message = self._proxy_get(self.config.ollama_service, "api/tags")
        if status != 200 or data is None:
            raise CheckFailed(f"Ollama /api/tags: HTTP {status} {message}", f"is Ollama ready? {command('status')}")
        listed = {normalise(m.get("name") or m.get("model") or "") for m in data.get("models") or []}
        missing = self._missing(listed)
        if missing:
            raise CheckFailed(f"not on Ollama's volume: {', '.join(missing)}", f"pull them: {command('models.pull')}")
        return f"{len(self.config.models)} model(s) present"

    def webui_health(self) -> str:
        """Proves Open WebUI's server is up: GET /health through the service proxy answers 200. Fails on
        any other status."""
        status, _, message = self._proxy_get(self.config.webui_service, "health")
        if status != 200:
            raise CheckFailed(
                f"Open WebUI /health: HTTP {status} {message}",
                f"is Open WebUI running? `kubectl -n {self.config.stack_namespace} logs deploy/open-webui`",
            )
        return "200"

    def webui_ready(self) -> str:
        """Proves Open WebUI is ready to serve: GET /ready through the service proxy answers 200 (images
        without /ready answer 404; then its database ping /health/db stands in). Failure points at
        PostgreSQL or Redis."""
        status, _, message = self._proxy_get(self.config.webui_service, "ready")
        path = "/ready"
        if status == 404:  # images before /ready existed: the database ping is the next best thing
            path = "/health/db"
            status, _, message = self._proxy_get(self.config.webui_service, "health/db")
        if status != 200:
            raise CheckFailed(
                f"Open WebUI {path}: HTTP {status} {message}",
                "Open WebUI cannot reach PostgreSQL or Redis: check their pods and the passwords in their Secrets",
            )
        return f"{path} 200"

    # -- public, through the ingress
    def https_health(self) -> str:
        """Proves the public HTTPS path works: GET https://CHAT_HOST/health through the ingress answers
        200 over TLS as Browser verifies it, with a certificate that has not expired. Returns its issuer and the days
        it has left."""
        answer = self.browser.request("GET", f"https://{self.config.chat_host}/health")
        if answer.status != 200:
            raise CheckFailed(
                f"GET /health: HTTP {answer.status}",
                "Traefik answers but not Open WebUI: check the Ingress and the open-webui Service",
            )
        cert = answer.cert
        if cert is None:
            raise CheckFailed("no certificate seen on the HTTPS connection")
        if cert.days_left < 0:
            raise CheckFailed(
                f"certificate expired {-cert.days_left} day(s) ago",
                "Traefik renews 30 days ahead: is acme.json persisted and port 80 open?",
            )
        return f"200; certificate by {cert.issuer}, expires in {cert.days_left} days" + (
            " (staging)" if self.config.insecure else ""  # verified against the staging roots alone
        )

    def http_redirect(self) -> str:
        """Proves plain HTTP is redirected to HTTPS: GET http://CHAT_HOST/ answers 301, 302, 307 or 308
        with a Location whose scheme is https and whose host is exactly CHAT_HOST (Traefik's web ->
        websecure redirect; `https://CHAT_HOST.evil.example` is not one)."""
        answer = self.browser.request("GET", f"http://{self.config.chat_host}/")
        location = answer.headers.get("location", "")
        target = urlsplit(location)
        redirected = target.scheme == "https" and (target.hostname or "") == self.config.chat_host.lower()
        if answer.status not in (301, 302, 307, 308) or not redirected:
            raise CheckFailed(
                f"plain HTTP answered {answer.status}"
                + (f" → {location}" if location else " without a redirect to HTTPS"),
                "Traefik's web entry point must redirect to websecure (k8s/k3s traefik config)",
            )
        return f"{answer.status} → {location}"

    def webui_version(self) -> str:
        """Proves the ingress reaches the Open WebUI just deployed: GET https://CHAT_HOST/api/version
        answers 200 with the version of the deployed image tag (a leading v ignored on both sides).
        Fails while the old image still answers, or when the ingress reaches another Open WebUI."""
        answer = self.browser.request("GET", f"https://{self.config.chat_host}/api/version")
        data = answer.json()
        running = str((data or {}).get("version", "")) if isinstance(data, dict) else ""
        wanted = self.config.webui_version.removeprefix("v")
        if answer.status != 200 or running.removeprefix("v") != wanted:
            raise CheckFailed(
                f"Open WebUI says version {running or '?'} (HTTP {answer.status}), deployed tag is "
                f"{self.config.webui_version}",
                "the new image is not rolled out yet, or the ingress reaches another Open WebUI",
            )
        return f"{running}"

    def _signin(self) -> str:
        """The admin's token (POST /api/v1/auths/signin through the public URL), asked for once
        per run and shared by the checks: Open WebUI allows 15 sign-ins per user in 3 minutes
        (counting failed ones), which retried checks would otherwise use up."""
        with self._signing_in:
            if self._token is None:
                self._token = self._ask_for_token()
            return self._token

    def _ask_for_token(self) -> str:
        answer = self.browser.request(
            "POST",
            f"https://{self.config.chat_host}/api/v1/auths/signin",
            body={"email": self.config.admin_email, "password": self.config.admin_password},
        )
        token = (answer.json() or {}).get("token") if answer.status == 200 else None
        if token:
            return token
        if answer.status == 429:
            raise CheckFailed(
                f"admin sign-in as {self.config.admin_email} rate-limited: HTTP 429",
                "Open WebUI allows 15 sign-ins per user in 3 minutes: wait a few minutes (something else is "
                "signing in as the admin, or smoke ran many times in a row)",
            )
        if answer.status in (400, 401, 403):
            raise CheckFailed(
                f"admin sign-in as {self.config.admin_email} refused: HTTP {answer.status}",
                "the password in the Secret open-webui (WEBUI_ADMIN_PASSWORD) is not the admin's: Open WebUI "
                f"applies it only while no user exists; {command('credentials')} shows the one k3stack has",
                final=True,
            )
        reason = f"admin sign-in as {self.config.admin_email} failed: HTTP {answer.status}"
        raise CheckFailed(reason, self._failed_hint())

    def _failed_hint(self) -> str:
        return (
            f"Open WebUI answers with PostgreSQL and Redis behind it: {command('smoke --only in-cluster')} shows its "
            f"/ready, `kubectl -n {self.config.stack_namespace} logs deploy/open-webui` why"
        )

    def signin_models(self) -> str:
        """Proves the admin can sign in through the public URL and that Open WebUI lists every configured
        model (GET /api/models with the run's shared token; ids compared normalised), so it reaches
        Ollama. A refused password is final; a missing model or another status is retried."""
        token = self._signin()
        answer = self.browser.request(
            "GET", f"https://{self.config.chat_host}/api/models", headers={"Authorization": f"Bearer {token}"}
        )
        data = answer.json()
        if answer.status != 200 or not isinstance(data, dict):
            raise CheckFailed(f"GET /api/models: HTTP {answer.status}", self._failed_hint())
        listed = {normalise(str(m.get("id", ""))) for m in data.get("data") or []}
        missing = self._missing(listed)
        if missing:
            raise CheckFailed(
                f"Open WebUI does not list {', '.join(missing)} ({len(listed)} listed)",
                f"pull them ({command('models.pull')}); Open WebUI reaches Ollama at OLLAMA_BASE_URL",
            )
        return f"signed in; {len(listed)} model(s) listed"

    def websocket(self) -> str:
        """What the chat page does: a WebSocket upgrade, the Engine.IO open packet, a Socket.IO
        connect with the signed-in token; then an event that Open WebUI sends back through its
        websocket manager — Redis pub/sub (WEBSOCKET_MANAGER=redis), with the session in Redis —
        so a websocket that works without Redis does not pass."""
        try:
            token = self._signin()
        except CheckFailed as failure:
            if failure.final:
                raise
            raise CheckFailed(f"no token for the websocket: {failure.reason}", REDIS_HINT) from None
        ws = self.browser.websocket(f"wss://{self.config.chat_host}{WEBSOCKET_PATH}")
        try:
            opened = _engineio_packet(ws, "0", "Engine.IO open packet")
            ws.send("40" + json.dumps({"token": token}))
            connected = _engineio_packet(ws, "4", "answer to the Socket.IO connect")
            if not connected.startswith("40"):
                raise CheckFailed(
                    f"Socket.IO connect refused: {connected[:120]!r}",
                    "Open WebUI did not accept the signed-in token on the websocket: is WEBUI_SECRET_KEY the "
                    "same for every Open WebUI pod?",
                )
            sid = json.loads(connected[2:] or "{}").get("sid", "")
            # What the chat page sends next; Open WebUI stores the session in Redis and acks.
            ws.send("421" + json.dumps(["user-join", {"auth": {"token": token}}]))
            try:
                joined = _engineio_packet(ws, "431", "answer to user-join")
            except CheckFailed as failure:
                raise CheckFailed(f"websocket connected (sid {sid[:8]}…), but {failure.reason}", REDIS_HINT) from None
            if not (json.loads(joined[3:] or "[]") or [None])[0]:
                raise CheckFailed(
                    "Open WebUI refused the signed-in token on the websocket (user-join answered without a user)",
                    "is WEBUI_SECRET_KEY the same for every Open WebUI pod, and unchanged since sign-in?",
                )
            document = f"k3stack-smoke-{sid}"
            ws.send("42" + json.dumps(["ydoc:document:join", {"document_id": document, "user_name": "k3stack"}]))
            try:
                _engineio_packet(ws, '42["ydoc:document:state"', "event back through the websocket manager")
            except CheckFailed as failure:
                raise CheckFailed(f"websocket connected (sid {sid[:8]}…), but {failure.reason}", REDIS_HINT) from None
            ws.send("42" + json.dumps(["ydoc:document:leave", {"document_id": document}]))
        finally:
            ws.close()
        upgrades = json.loads(opened[1:] or "{}").get("upgrades") or []
        return f"websocket upgraded, Socket.IO connected, event back through Redis (upgrades: {upgrades or 'none'})"

    def netdata_auth(self) -> str:
        """Proves the Netdata dashboard is behind basic auth: GET https://MONITOR_HOST/api/v1/info answers
        401 without credentials and 200 with NETDATA_USER/NETDATA_PASSWORD. A 200 without credentials
        (open to anyone) is final."""
        url = f"https://{self.config.monitor_host}{NETDATA_PATH}"
        anonymous = self.browser.request("GET", url)
        if anonymous.status != 401:
            raise CheckFailed(
                f"Netdata answered {anonymous.status} without credentials (expected 401)",
                "the dashboard is open to anyone: the Ingress must use the netdata-auth Middleware",
                final=anonymous.status == 200,
            )
        credentials = base64.b64encode(f"{self.config.netdata_user}:{self.config.netdata_password}".encode()).decode()
        answer = self.browser.request("GET", url, headers={"Authorization": f"Basic {credentials}"})
        if answer.status != 200:
            raise CheckFailed(
                f"Netdata answered {answer.status} with the credentials of {self.config.netdata_user} (expected 200)",
                "NETDATA_USER/NETDATA_PASSWORD differ from the Secret netdata-basic-auth, or Netdata is not ready",
            )
        return "401 without credentials, 200 with them"


REDIS_HINT = (
    "Open WebUI's websocket manager and sessions need Redis (WEBSOCKET_REDIS_URL, REDIS_URL): is the redis pod "
    "ready, with the password of REDIS_URL in the Secret open-webui? `kubectl -n NS logs deploy/open-webui` says why"
)


def _engineio_packet(ws: websocket.WebSocket, prefix: str, what: str) -> str:
    """The next Engine.IO packet starting with `prefix` (pings answered, others skipped)."""
    deadline = time.monotonic() + (ws.gettimeout() or 10)
    while time.monotonic() < deadline:
        try:
            packet = ws.recv()
        except websocket.WebSocketTimeoutException:
            break
        except (OSError, websocket.WebSocketException) as exc:
            raise CheckFailed(f"no {what}: the websocket closed ({exc or type(exc).__name__})") from None
        if isinstance(packet, bytes):
            continue
        if packet == "2":
            ws.send("3")
            continue
        if packet.startswith(prefix):
            return packet
        if packet.startswith("44"):  # Socket.IO CONNECT_ERROR
            return packet
    raise CheckFailed(f"no {what} within {ws.gettimeout() or 10:.0f}s")


# -- running them ---------------------------------------------------------------------------------
# What a check that is not true YET fails with: its own CheckFailed, the API or the network not
# there yet, a body that is not the JSON it will be (a proxy's HTML page while a pod starts).
# Anything else (KeyError, TypeError, ...) is a bug in the check: reported at once, never retried.
RETRIED_ERRORS = (CheckFailed, KubeError, OSError, json.JSONDecodeError, http.client.HTTPException)


def run_checks(
    checks: list[Check],
    *,
    deadline: float,
    interval: float,
    on_result: Callable[[CheckResult], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SmokeReport:
    """Run every check at once; a failing one tries again every `interval` seconds (k3stack.retry,
    steady pace) until `deadline` seconds from the start, or gives up at once when its failure is
    final. Returns a SmokeReport with one CheckResult per check, in the order given."""
    started = time.monotonic()

    def one(check: Check) -> CheckResult:
        first = time.monotonic()
        attempts = 0

        def attempt() -> str:
            nonlocal attempts
            attempts += 1
            try:
                return check.run()
            except CheckFailed:
                raise
            except RETRIED_ERRORS as exc:
                raise CheckFailed(f"{type(exc).__name__}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - one check's bug must not hide the others' results
                raise CheckFailed(f"unexpected {type(exc).__name__}: {exc} (a bug in this check)", final=True) from None

        # No new try once the next one could not finish before the deadline.
        budget = max(0.0, deadline - (first - started) - interval)
        policy = retrying(
            lambda exc: isinstance(exc, CheckFailed) and not exc.final,
            within=budget,
            first=interval,
            cap=interval,
            jitter=interval / 10,
            sleep=sleep,
        )
        try:
            detail = policy(attempt)
        except CheckFailed as failure:
            return CheckResult(
                check.name,
                check.group,
                False,
                time.monotonic() - first,
                reason=failure.reason,
                hint=failure.hint,
                attempts=attempts,
            )
        return CheckResult(check.name, check.group, True, time.monotonic() - first, detail=detail, attempts=attempts)

    results: list[CheckResult] = []
    with ThreadPoolExecutor(max_workers=max(1, len(checks)), thread_name_prefix="smoke") as pool:
        for result in pool.map(one, checks):
            results.append(result)
            if on_result is not None:
                on_result(result)
    return SmokeReport(results, time.monotonic() - started)


def smoke(kube: Kube, config: SmokeConfig, console: Console | None = None, *, only: Iterable[str] = ()) -> SmokeReport:
    """`inv smoke`: run the checks (all, or the groups in `only`) and return the report; the
    caller shows it with k3stack.report.emit and exits 1 when `report.ok` is False."""
    if console is not None:
        console.add_secrets(config.secrets())
        console.step(f"smoke: checking {config.chat_host} and {config.monitor_host} (deadline {config.deadline:.0f}s)")
    groups = set(only)
    if unknown := groups - set(GROUPS):
        # A misspelt group would run nothing, and nothing failing would read as a pass.
        raise ValueError(f"unknown check group(s) {', '.join(sorted(unknown))}: choose from {', '.join(GROUPS)}")
    checks = [c for c in Checks(kube, config).all() if not groups or c.group in groups]
    return run_checks(checks, deadline=config.deadline, interval=config.interval)
