"""The stand-in `k3s` program the stand-in installer's ${BIN_DIR}/k3s runs on a test host.

`k3s server`: token file, a CA + serving cert under /var/lib/rancher/k3s/server/tls, etcd on the
host IP + 127.0.0.1 (2379/2380), a REAL kube-apiserver on 0.0.0.0:6443 (the bed's cached build),
/etc/rancher/k3s/k3s.yaml as K3s writes it; the first server also runs controller-manager +
scheduler, K3s's add-ons (k3s-addons.yaml, bundled traefik HelmCharts), the manifests directory
(server-side apply) and the node simulator (pods, PVCs, helm-install Jobs). A joining server
(`server: https://X:6443`) runs its own kube-apiserver on X's etcd and registers its Node.
`k3s agent`: checks the token against the server and registers its Node through the server's API.

Simplifications (documented in tests/testbed/standin/__init__.py's report): one CA for clients and
serving; the join token's secret authenticates as system:masters (--token-auth-file); joining
servers are no etcd members; plain-HTTP etcd; no kubelet, containers or networking.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VERSION = os.environ.get("K3S_STANDIN_VERSION", "v0.0.0+standin")
GO_VERSION = "go1.24.4"
CONFIG = Path("/etc/rancher/k3s/config.yaml")
KUBECONFIG = Path("/etc/rancher/k3s/k3s.yaml")
DATA = Path("/var/lib/rancher/k3s")
SERVER = DATA / "server"
TLS = SERVER / "tls"
CRED = SERVER / "cred"
MANIFESTS = SERVER / "manifests"
AGENT = DATA / "agent"
LOGS = DATA / "standin-logs"  # component logs (etcd, kube-apiserver, ...); the unit log gets ours
SERVICE_CIDR = "10.43.0.0/16"
SERVICE_IP = "10.43.0.1"
BOOTSTRAP_SECRET = "k3s-standin-bootstrap"  # kube-system Secret: what joining servers fetch
# Like K3s's dynamic listener: once dynamic-cert.json exists, the serving cert is reused as is,
# even when tls-san changed (delete the file and restart to re-issue). The one switch for it:
REUSE_SERVING_CERT_WHILE_MARKER_EXISTS = True

LIST_FLAGS = {"tls-san", "node-label", "node-taint", "disable", "kube-apiserver-arg"}
BOOL_FLAGS = {"cluster-init", "debug"}
SHORT = {"-t": "token", "-s": "server", "-c": "config", "-o": "write-kubeconfig"}
ADDON_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # the file's name becomes an Addon's name


# -- logging ----------------------------------------------------------------------------------
def log(level: str, msg: str) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    print(f'time="{now}" level={level} msg={json.dumps(msg)}', flush=True)


def fatal(msg: str) -> None:
    log("fatal", msg)
    sys.exit(1)


# -- configuration ------------------------------------------------------------------------------
def parse_flags(args: list[str]) -> dict:
    flags: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in SHORT:
            key, value = SHORT[arg], None
        elif arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            value = value if "=" in arg else None
        else:
            continue
        if key in BOOL_FLAGS:
            flags[key] = value is None or value.lower() in ("true", "1")
            continue
        if value is None and i < len(args):
            value = args[i]
            i += 1
        if key in LIST_FLAGS:
            flags.setdefault(key, []).extend(v for v in str(value).split(",") if v)
        else:
            flags[key] = value
    return flags


def load_config(args: list[str]) -> dict:
    """Config files (config.yaml, then config.yaml.d/*.yaml alphabetically; later wins, `key+`
    appends) < environment (K3S_*) < command-line flags -- as in K3s."""
    cli = parse_flags(args)
    path = Path(cli.get("config") or os.environ.get("K3S_CONFIG_FILE") or CONFIG)
    files = [path] if path.is_file() else []
    drop_ins = Path(f"{path}.d")
    if drop_ins.is_dir():
        files += sorted(p for p in drop_ins.iterdir() if p.suffix in (".yaml", ".yml"))
    merged: dict = {}
    for file in files:
        # Values as written (0644 stays "0644"), as K3s reads them; booleans converted below.
        doc = yaml.load(file.read_text(), Loader=yaml.BaseLoader) or {}
        for key, value in doc.items():
            if key.endswith("+"):
                key = key[:-1]
                base = merged.get(key) or []
                merged[key] = [*base, *(value if isinstance(value, list) else [value])]
            else:
                merged[key] = value
    for key in BOOL_FLAGS:
        if isinstance(merged.get(key), str):
            merged[key] = merged[key].lower() in ("true", "yes", "on", "1")
    for key in LIST_FLAGS:
        if key in merged and not isinstance(merged[key], list):
            merged[key] = [v for v in str(merged[key]).split(",") if v]
    for env, key in (
        ("K3S_TOKEN", "token"),
        ("K3S_URL", "server"),
        ("K3S_NODE_NAME", "node-name"),
        ("K3S_KUBECONFIG_MODE", "write-kubeconfig-mode"),
        ("K3S_KUBECONFIG_OUTPUT", "write-kubeconfig"),
        ("K3S_CLUSTER_INIT", "cluster-init"),
    ):
        if os.environ.get(env):
            merged[key] = os.environ[env] if key != "cluster-init" else os.environ[env].lower() == "true"
    if os.environ.get("K3S_TOKEN_FILE") and "token" not in cli:
        merged["token"] = Path(os.environ["K3S_TOKEN_FILE"]).read_text().strip()
    merged.update(cli)
    if merged.get("token-file") and not merged.get("token"):
        merged["token"] = Path(merged["token-file"]).read_text().strip()
    return merged


def token_parts(token: str) -> tuple[str | None, str]:
    """(CA hash or None, secret) of a K10<hash>::<user>:<secret> or short token."""
    token = token.strip()
    if token.startswith("K10") and "::" in token:
        ca_hash, _, rest = token[3:].partition("::")
        return ca_hash, rest.split(":", 1)[1] if ":" in rest else rest
    return None, token


def host_ips() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


# -- PKI ------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=mode)
    tmp.chmod(mode)
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_ca() -> None:
    """server-ca.crt/.key and the service-account key (service.key), made once."""
    if not (TLS / "server-ca.crt").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"k3s-server-ca@{int(time.time())}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write(TLS / "server-ca.key", _key_pem(key))
        _write(TLS / "server-ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if not (TLS / "service.key").exists():
        _write(TLS / "service.key", _key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


def issue(name: str, cn: str, *, org: str | None = None, ips=(), dns=(), server: bool = False) -> None:
    ca_key = serialization.load_pem_private_key((TLS / "server-ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((TLS / "server-ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if ips or dns:
        sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(TLS / f"{name}.key", _key_pem(key))
    _write(
        TLS / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM) + (TLS / "server-ca.crt").read_bytes(), 0o644
    )


def serving_cert(cfg: dict, ips: list[str]) -> None:
    san_ips, san_dns = ["127.0.0.1", *ips, SERVICE_IP], ["localhost", socket.gethostname()]
    san_dns += ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
    for san in cfg.get("tls-san") or []:
        try:
            ipaddress.ip_address(san)
            san_ips.append(str(san))
        except ValueError:
            san_dns.append(str(san))
    san_ips, san_dns = list(dict.fromkeys(san_ips)), list(dict.fromkeys(san_dns))
    marker = TLS / "dynamic-cert.json"
    have = (TLS / "serving-kube-apiserver.crt").exists()
    if have and marker.exists():
        previous = json.loads(marker.read_text())
        if REUSE_SERVING_CERT_WHILE_MARKER_EXISTS or (previous.get("ips"), previous.get("dns")) == (san_ips, san_dns):
            if (previous.get("ips"), previous.get("dns")) != (san_ips, san_dns):
                log("info", "Serving certificate kept as is (dynamic-cert.json exists); new SANs not added")
            return
    issue("serving-kube-apiserver", "kube-apiserver", ips=san_ips, dns=san_dns, server=True)
    _write(marker, json.dumps({"ips": san_ips, "dns": san_dns, "issued": time.time()}).encode())
    log("info", f"Issued serving certificate for {', '.join(san_ips + san_dns)}")


def ca_hash() -> str:
    return hashlib.sha256((TLS / "server-ca.crt").read_bytes()).hexdigest()


# -- HTTP -----------------------------------------------------------------------------------------
def http(url: str, *, method="GET", body=None, ctx=None, token=None, content_type="application/json", timeout=10):
    """(status, parsed JSON or text); connection problems raise OSError."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=timeout) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def admin_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(TLS / "server-ca.crt"))
    ctx.load_cert_chain(str(TLS / "client-admin.crt"), str(TLS / "client-admin.key"))
    return ctx


def fetch_bootstrap(url: str, token: str, *, joining_server: bool, stop: threading.Event) -> dict:
    """What a joining node gets from the server with its token (K3s: /v1-k3s/server-bootstrap,
    /cacerts); 401 is fatal, an unreachable or still-starting server is waited for."""
    ca_sum, secret = token_parts(token)
    base = url.rstrip("/")
    waited = 0
    while not stop.is_set():
        try:
            status, body = http(
                f"{base}/api/v1/namespaces/kube-system/secrets/{BOOTSTRAP_SECRET}", ctx=insecure(), token=secret
            )
        except OSError as exc:
            status, body = 0, str(exc)
        if status == 401:
            if joining_server:
                fatal(f"starting kubernetes: preparing server: {base}/v1-k3s/server-bootstrap: 401 Unauthorized")
            fatal(f"token is not valid: {base}/apis: 401 Unauthorized")
        if status == 200:
            data = {k: base64.b64decode(v) for k, v in body["data"].items()}
            actual = hashlib.sha256(data["ca.crt"]).hexdigest()
            if ca_sum and ca_sum != actual:
                fatal(f"token CA hash does not match the Cluster CA certificate hash: {ca_sum} != {actual}")
            return data
        if waited % 10 == 0:
            log(
                "info",
                f"Waiting to retrieve {'server bootstrap data' if joining_server else 'agent configuration'}; "
                f"server is not ready: {base}: {status or body}",
            )
        waited += 1
        stop.wait(1)
    sys.exit(0)


# -- processes ------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self):
        self.children: dict[str, subprocess.Popen] = {}
        self.stop = threading.Event()
        self.running = False  # before "up and running", a stop ends startup at once
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, *_) -> None:
        self.stop.set()
        if not self.running:  # no waiting here: the interrupted code may hold Popen's wait lock
            for child in self.children.values():
                if child.returncode is None:
                    child.send_signal(signal.SIGTERM)
            os._exit(0)

    def launch(self, name: str, argv: list[str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        out = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        log("info", f"Running {name} {' '.join(argv[1:])}")
        self.children[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        out.close()

    def check(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                tail = (LOGS / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
                fatal(f"{name} exited with status {child.returncode}: {' | '.join(tail)}")

    def shutdown(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()

    def wait_ready(self, timeout: float = 120) -> None:
        ctx = admin_context()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            self.check()
            try:
                if http("https://127.0.0.1:6443/readyz", ctx=ctx, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        if not self.stop.is_set():
            fatal(f"kube-apiserver not ready after {timeout:.0f}s")

    def run_until_stopped(self) -> None:
        self.running = True
        while not self.stop.wait(1):
            self.check()


def bin_dir() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from tests.testbed.kube import cached_binaries

    found = cached_binaries()
    if not found:
        fatal("no cached kube-apiserver build (run the kube test bed once: tests/testbed/build-kube.sh)")
    return found


def kubeconfig_text(server: str, cert: str, key: str) -> str:
    def b64(name: str) -> str:
        return base64.b64encode((TLS / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "clusters": [
            {"cluster": {"certificate-authority-data": b64("server-ca.crt"), "server": server}, "name": "default"}
        ],
        "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
        "current-context": "default",
        "kind": "Config",
        "preferences": {},
        "users": [{"name": "default", "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
    }
    return yaml.safe_dump(config, default_flow_style=False)


def write_kubeconfig_file(path: Path, client: str, mode: int = 0o600) -> Path:
    _write(path, kubeconfig_text("https://127.0.0.1:6443", f"{client}.crt", f"{client}.key").encode(), mode)
    return path


# -- the deploy controller (manifests dir) -----------------------------------------------------
class Deployer:
    """Server-side apply of every manifest file, at start and whenever one changes; a file whose
    objects fail is logged (as K3s does) and retried on the next pass."""

    ORDER: ClassVar[dict[str, int]] = {"Namespace": 0, "CustomResourceDefinition": 1}

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.ctx = admin_context()
        self.done: dict[Path, str] = {}
        self.resources: dict[str, dict] = {}
        self.logged: dict[Path, str] = {}

    def _resource(self, api_version: str, kind: str) -> dict:
        if api_version not in self.resources or kind not in self.resources[api_version]:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, body = http(f"https://127.0.0.1:6443{path}", ctx=self.ctx)
            if status != 200:
                raise RuntimeError(f'no matches for kind "{kind}" in version "{api_version}"')
            self.resources[api_version] = {r["kind"]: r for r in body.get("resources", []) if "/" not in r["name"]}
        resource = self.resources[api_version].get(kind)
        if resource is None:
            self.resources.pop(api_version, None)
            raise RuntimeError(f'no matches for kind "{kind}" in version "{api_version}"')
        return resource

    def apply(self, doc: dict) -> None:
        api_version, kind, meta = doc["apiVersion"], doc["kind"], doc.get("metadata") or {}
        resource = self._resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if resource["namespaced"]:
            namespace = meta.get("namespace") or "default"
            doc = {**doc, "metadata": {**meta, "namespace": namespace}}
            base += f"/namespaces/{namespace}"
        url = f"https://127.0.0.1:6443{base}/{resource['name']}/{meta['name']}?fieldManager=deploy@{socket.gethostname()}&force=true"
        status, body = http(url, method="PATCH", body=doc, ctx=self.ctx, content_type="application/apply-patch+yaml")
        if status >= 300:
            raise RuntimeError(body.get("message", body) if isinstance(body, dict) else body)

    def sync(self) -> None:
        if not MANIFESTS.is_dir():
            return
        for path in sorted(MANIFESTS.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json") or Path(f"{path}.skip").exists() or not path.is_file():
                continue
            if not ADDON_NAME.match(path.stem):
                message = (
                    f'Failed to process config: failed to process {path}: Addon.k3s.cattle.io "{path.stem}" is'
                    f' invalid: metadata.name: Invalid value: "{path.stem}": a lowercase RFC 1123 subdomain must'
                    " consist of lower case alphanumeric characters, '-' or '.', and must start and end with an"
                    " alphanumeric character"
                )
                if self.logged.get(path) != message:
                    log("error", message)
                    self.logged[path] = message
                continue
            text = path.read_text(errors="replace")
            digest = hashlib.sha256(text.encode()).hexdigest()
            if self.done.get(path) == digest:
                continue
            try:
                docs = [d for d in yaml.safe_load_all(text) if d]
                for doc in sorted(docs, key=lambda d: self.ORDER.get(d.get("kind"), 2)):
                    items = doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc]
                    for item in items:
                        self.apply(item)
            except Exception as exc:  # noqa: BLE001 - logged like K3s, retried next pass
                message = f"Failed to process config: failed to process {path}: {exc}"
                if self.logged.get(path) != message:
                    log("error", message)
                    self.logged[path] = message
                continue
            self.done[path] = digest
            self.logged.pop(path, None)
            log("info", f"Applied manifest {path}")

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001
                log("error", f"deploy controller: {exc}")
            self.stop.wait(1)


TRAEFIK = """apiVersion: helm.cattle.io/v1
kind: HelmChart
metadata:
  name: traefik-crd
  namespace: kube-system
spec:
  chart: https://%{{KUBERNETES_API}}%/static/charts/traefik-crd-{chart}.tgz
---
apiVersion: helm.cattle.io/v1
kind: HelmChart
metadata:
  name: traefik
  namespace: kube-system
spec:
  chart: https://%{{KUBERNETES_API}}%/static/charts/traefik-{chart}.tgz
  valuesContent: |-
    deployment:
      podAnnotations:
        prometheus.io/port: "8082"
        prometheus.io/scrape: "true"
    providers:
      kubernetesIngress:
        publishedService:
          enabled: true
    priorityClassName: "system-cluster-critical"
    image:
      repository: "rancher/mirrored-library-traefik"
      tag: "{image}"
    tolerations:
    - key: "CriticalAddonsOnly"
      operator: "Exists"
    - key: "node-role.kubernetes.io/control-plane"
      operator: "Exists"
      effect: "NoSchedule"
    - key: "node-role.kubernetes.io/master"
      operator: "Exists"
      effect: "NoSchedule"
    service:
      ipFamilyPolicy: "PreferDualStack"
"""


def bundled_manifests(cfg: dict) -> None:
    """K3s writes its bundled add-ons into the manifests dir at start (and removes disabled ones)."""
    disabled = set(cfg.get("disable") or [])
    minor = int(VERSION.lstrip("v").split(".")[1]) if VERSION.count(".") >= 2 else 35
    chart, image = ("34.2.1+up34.2.0", "3.3.6") if minor >= 32 else ("27.0.201+up27.0.2", "2.11.10")
    target = MANIFESTS / "traefik.yaml"
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    if "traefik" in disabled:
        target.unlink(missing_ok=True)
    else:
        _write(target, TRAEFIK.format(chart=chart, image=image).encode(), 0o600)


# -- node ------------------------------------------------------------------------------------------
def parse_taint(text: str) -> dict:
    key_value, _, effect = text.partition(":")
    key, _, value = key_value.partition("=")
    taint = {"key": key, "effect": effect or "NoSchedule"}
    if value:
        taint["value"] = value
    return taint


def start_node(api, cfg: dict, node_ip: str, labels: dict, stop: threading.Event, **simulate):
    from tests.testbed.nodesim import NodeSimulator

    for item in cfg.get("node-label") or []:
        key, _, value = str(item).partition("=")
        labels[key] = value
    name = cfg.get("node-name") or socket.gethostname()
    labels.update(
        {
            "node.kubernetes.io/instance-type": "k3s",
            "k3s.io/hostname": socket.gethostname(),
            "k3s.io/internal-ip": node_ip,
        }
    )
    sim = NodeSimulator(
        api,
        node_ip=node_ip,
        pod_ips=[node_ip],
        node_name=name,
        labels=labels,
        taints=[parse_taint(str(t)) for t in cfg.get("node-taint") or []],
        kubelet_version=VERSION,
        **simulate,
    )
    last = None
    while not stop.is_set():
        try:
            sim.start()
            log("info", f"Node {name} registered (simulated kubelet)")
            break
        except Exception as exc:  # noqa: BLE001 - e.g. kube-node-lease not created yet
            if str(exc)[:80] != last:
                log("info", f"Waiting to register node {name}: {str(exc)[:300]}")
                last = str(exc)[:80]
            stop.wait(0.5)

    def report() -> None:
        seen = 0
        while not stop.wait(5):
            for error in sim.errors[seen:]:
                log("warning", f"node simulator: {error[:500]}")
            seen = len(sim.errors)

    threading.Thread(target=report, daemon=True).start()
    return sim


# -- server ----------------------------------------------------------------------------------------
def server(cfg: dict) -> None:
    sup = Supervisor()
    ips = [cfg["node-ip"]] if cfg.get("node-ip") else host_ips()
    if not ips:
        fatal("no global IPv4 address on this host")
    node_ip = ips[0]
    join = cfg.get("server")
    token_file = SERVER / "token"
    configured = str(cfg["token"]) if cfg.get("token") else None
    stored = token_parts(token_file.read_text())[1] if token_file.exists() else None
    if stored and configured and token_parts(configured)[1] != stored:
        fatal("starting kubernetes: preparing server: bootstrap data already found and encrypted with different token")
    if join:
        if not configured and not stored:
            fatal("starting kubernetes: preparing server: token is required to join a cluster")
        data = fetch_bootstrap(join, configured or stored, joining_server=True, stop=sup.stop)
        if not (TLS / "server-ca.crt").exists():
            _write(TLS / "server-ca.crt", data["ca.crt"], 0o644)
            _write(TLS / "server-ca.key", data["ca.key"])
            _write(TLS / "service.key", data["service.key"])
        etcd_url = f"http://{urlsplit(join).hostname}:2379"
    else:
        ensure_ca()
        etcd_url = "http://127.0.0.1:2379"
    secret = stored or (token_parts(configured)[1] if configured else secrets.token_hex(16))
    if not token_file.exists():
        _write(token_file, f"K10{ca_hash()}::server:{secret}\n".encode())
        (SERVER / "node-token").unlink(missing_ok=True)
        (SERVER / "node-token").symlink_to("token")
    _write(CRED / "token.csv", f'{secret},k3s-standin-node,k3s-standin-node,"system:masters"\n'.encode())
    serving_cert(cfg, ips)
    for name, cn, org in (
        ("client-admin", "system:admin", "system:masters"),
        ("client-controller", "system:kube-controller-manager", None),
        ("client-scheduler", "system:kube-scheduler", None),
    ):
        if not (TLS / f"{name}.crt").exists():
            issue(name, cn, org=org)
    sa_key = serialization.load_pem_private_key((TLS / "service.key").read_bytes(), None)
    _write(
        TLS / "service.pub",
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        0o644,
    )
    binaries = bin_dir()
    hostname = cfg.get("node-name") or socket.gethostname()
    if not join:
        (SERVER / "db").mkdir(parents=True, exist_ok=True)
        # K3s: embedded etcd (db/etcd) with cluster-init, else kine on SQLite (db/state.db). The stand-in's
        # API server always runs on etcd; without cluster-init that etcd lives outside db/ and db/state.db
        # is a real SQLite database in WAL mode that kine_writer keeps writing to, as kine does.
        etcd_dir = SERVER / "db" / "etcd" if cfg.get("cluster-init") else DATA / "standin-etcd"
        if not cfg.get("cluster-init"):
            threading.Thread(target=kine_writer, args=(sup.stop,), name="kine", daemon=True).start()
        sup.launch(
            "etcd",
            [
                "etcd",
                f"--name={hostname}",
                f"--data-dir={etcd_dir}",
                f"--listen-client-urls=http://127.0.0.1:2379,http://{node_ip}:2379",
                f"--advertise-client-urls=http://{node_ip}:2379",
                f"--listen-peer-urls=http://{node_ip}:2380",
                f"--initial-advertise-peer-urls=http://{node_ip}:2380",
                f"--initial-cluster={hostname}=http://{node_ip}:2380",
                "--logger=zap",
                "--log-level=warn",
            ],
        )
    sup.launch(
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=0.0.0.0",
            "--secure-port=6443",
            "--insecure-port=0",
            f"--advertise-address={node_ip}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--client-ca-file={TLS / 'server-ca.crt'}",
            f"--tls-cert-file={TLS / 'serving-kube-apiserver.crt'}",
            f"--tls-private-key-file={TLS / 'serving-kube-apiserver.key'}",
            f"--token-auth-file={CRED / 'token.csv'}",
            f"--service-account-key-file={TLS / 'service.pub'}",
            f"--service-account-signing-key-file={TLS / 'service.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            *[f"--{a}" for a in cfg.get("kube-apiserver-arg") or []],
        ],
    )
    started = time.monotonic()
    sup.wait_ready()
    log("info", f"kube-apiserver ready after {time.monotonic() - started:.1f}s")
    mode = int(str(cfg.get("write-kubeconfig-mode") or "600"), 8)
    kubeconfig = Path(cfg.get("write-kubeconfig") or KUBECONFIG)
    write_kubeconfig_file(kubeconfig, "client-admin", mode)
    kubeconfig.chmod(mode)
    log("info", f"Wrote kubeconfig {kubeconfig}")
    admin = write_kubeconfig_file(CRED / "admin.kubeconfig", "client-admin")

    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(config_file=str(admin))
    labels = {"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"}
    if cfg.get("cluster-init") or join:
        labels["node-role.kubernetes.io/etcd"] = "true"
    if join:
        sim = start_node(api, cfg, node_ip, labels, sup.stop, claims=False, helm=False)
        bundled_manifests(cfg)
        threading.Thread(target=Deployer(sup.stop).run, name="deploy", daemon=True).start()
    else:
        for name, client_name in (("controller", "client-controller"), ("scheduler", "client-scheduler")):
            write_kubeconfig_file(CRED / f"{name}.kubeconfig", client_name)
        sup.launch(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={CRED / 'controller.kubeconfig'}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                f"--service-account-private-key-file={TLS / 'service.key'}",
                f"--root-ca-file={TLS / 'server-ca.crt'}",
                "--use-service-account-credentials=true",
                "--node-monitor-grace-period=2m",
            ],
        )
        sup.launch(
            "kube-scheduler",
            [
                str(binaries / "kube-scheduler"),
                f"--kubeconfig={CRED / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
            ],
        )
        publish_bootstrap(sup.stop)
        from .helm import stamp_with

        sim = start_node(api, cfg, node_ip, labels, sup.stop, helm_stamp=stamp_with(api, log))
        from tests.testbed.cluster import apply_addons

        apply_addons(api)
        bundled_manifests(cfg)
        threading.Thread(target=Deployer(sup.stop).run, name="deploy", daemon=True).start()
    log("info", "k3s is up and running")
    try:
        sup.run_until_stopped()
    finally:
        sim.stop()
        sup.shutdown()
        log("info", "k3s stopped")


def publish_bootstrap(stop: threading.Event) -> None:
    """The data joining servers need (K3s keeps it encrypted in the datastore)."""
    ctx = admin_context()
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": BOOTSTRAP_SECRET, "namespace": "kube-system"},
        "type": "Opaque",
        "data": {
            k: base64.b64encode((TLS / f).read_bytes()).decode()
            for k, f in (("ca.crt", "server-ca.crt"), ("ca.key", "server-ca.key"), ("service.key", "service.key"))
        },
    }
    url = "https://127.0.0.1:6443/api/v1/namespaces/kube-system/secrets"
    while not stop.is_set():
        status, _ = http(url, method="POST", body=body, ctx=ctx)
        if status in (201, 409):
            return
        stop.wait(0.2)  # kube-system is created by the API server's bootstrap controller


# -- agent -------------------------------------------------------------------------------------------
def agent(cfg: dict) -> None:
    sup = Supervisor()
    url = cfg.get("server")
    token = cfg.get("token")
    if not url:
        fatal("--server is required")
    if not token:
        fatal("--token is required")
    ips = [cfg["node-ip"]] if cfg.get("node-ip") else host_ips()
    data = fetch_bootstrap(url, str(token), joining_server=False, stop=sup.stop)
    ca = AGENT / "server-ca.crt"
    _write(ca, data["ca.crt"], 0o644)
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url.rstrip("/")
    configuration.ssl_ca_cert = str(ca)
    configuration.api_key = {"BearerToken": f"Bearer {token_parts(str(token))[1]}"}
    api = client.ApiClient(configuration)
    sim = start_node(api, cfg, ips[0], {}, sup.stop, claims=False, helm=False)
    log("info", "k3s agent is up and running")
    try:
        sup.run_until_stopped()
    finally:
        sim.stop()
        log("info", "k3s agent stopped")


# -- kine (SQLite) ------------------------------------------------------------------------------------
STATE_DB = SERVER / "db" / "state.db"


def kine_writer(stop: threading.Event) -> None:
    """db/state.db as kine keeps it: WAL mode (state.db-wal and -shm beside it while open), a `kine`
    table of revisions, a row written every 0.2 s in a transaction that also rewrites the running
    total -- so a copy taken file by file while it runs can tear, and SQLite's online backup cannot."""
    import sqlite3

    db = sqlite3.connect(STATE_DB, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER,"
        " deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS standin_total (revisions INTEGER)")
    if db.execute("SELECT COUNT(*) FROM standin_total").fetchone()[0] == 0:
        db.execute("INSERT INTO standin_total VALUES (0)")
    while not stop.wait(0.2):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)"
            " VALUES ('/registry/standin/heartbeat', 0, 0, 0, 0, 0, ?, NULL)",
            (os.urandom(512),),
        )
        db.execute("UPDATE standin_total SET revisions = revisions + 1")
        db.execute("COMMIT")
    db.close()


# -- etcd-snapshot -----------------------------------------------------------------------------------
def etcd_snapshot(args: list[str]) -> None:
    """`k3s etcd-snapshot save [--name N] [--etcd-snapshot-dir D]` as K3s documents it: the embedded
    etcd's snapshot written to ${data-dir}/server/db/snapshots/<name>-<node name>-<unix time> (name
    default `on-demand`), the path logged. Taken through etcd's v3 Maintenance.Snapshot API (its JSON
    gateway on the client URL: no etcdctl in the bed); fails like K3s when this server runs no etcd."""
    sub, flags = (args[0] if args else "save"), parse_flags(args[1:])
    if sub != "save":
        print(f"k3s stand-in: etcd-snapshot {sub} is not modelled (only save)", file=sys.stderr)
        sys.exit(1)
    if not (SERVER / "db" / "etcd").is_dir():
        fatal(f"etcd database not found in {SERVER / 'db'}")
    cfg = load_config([])
    name = f"{flags.get('name') or 'on-demand'}-{cfg.get('node-name') or socket.gethostname()}-{int(time.time())}"
    directory = Path(flags.get("etcd-snapshot-dir") or flags.get("dir") or SERVER / "db" / "snapshots")
    path = directory / name
    log("info", f"Saving etcd snapshot to {path}")
    request = urllib.request.Request("http://127.0.0.1:2379/v3/maintenance/snapshot", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            raw = reply.read().decode()
    except OSError as exc:
        fatal(f"failed to save snapshot {name}: etcd at 127.0.0.1:2379: {exc}")
    blob, decoder, at = bytearray(), json.JSONDecoder(), 0
    while at < len(raw.rstrip()):
        message, at = decoder.raw_decode(raw, at)
        while at < len(raw) and raw[at].isspace():
            at += 1
        if "error" in message:
            fatal(f"failed to save snapshot {name}: {message['error']}")
        blob += base64.b64decode(message.get("result", {}).get("blob", ""))
    _write(path, bytes(blob))
    log("info", f"Snapshot {name} saved.")
    print(path)


# -- entry --------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    argv0 = os.environ.get("K3S_STANDIN_ARGV0", "k3s")
    if argv0 in ("kubectl", "crictl", "ctr"):
        argv = [argv0, *argv]
    if not argv or argv[0] in ("--version", "-v", "version"):
        print(f"k3s version {VERSION} (standin)\ngo version {GO_VERSION}")
        return
    command, rest = argv[0], argv[1:]
    if command == "kubectl":
        env = dict(os.environ)
        env.setdefault("KUBECONFIG", str(KUBECONFIG))
        os.execvpe("/usr/bin/kubectl", ["kubectl", *rest], env)
    if command in ("crictl", "ctr"):
        print(f"{command}: not available in the k3stack stand-in (no container runtime)", file=sys.stderr)
        sys.exit(1)
    if command == "etcd-snapshot":
        etcd_snapshot(rest)
        return
    if command not in ("server", "agent"):
        print(f"k3s stand-in: unsupported command {command!r}", file=sys.stderr)
        sys.exit(1)
    cfg = load_config(rest)
    log("info", f"Starting k3s {'agent ' if command == 'agent' else ''}{VERSION} (standin)")
    (server if command == "server" else agent)(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
