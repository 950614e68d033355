"""The connection to the Kubernetes API: one raw-JSON request path with retries, clear errors,
and a request count (benchmarks read it). Typed client models are not used: k3stack works on
plain dicts, exactly what it applies and what the server returns."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from urllib.parse import quote

import urllib3
import yaml

from .errors import K3stackError, command
from .kinds import KNOWN, Resource
from .retry import retrying

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class KubeError(K3stackError):
    """A problem talking to the cluster, explained for a person (what, where, the fix)."""


class ApiError(KubeError):
    """The API server answered with an error status; `body` is its Status object (or, for a body
    that is not JSON, a Status-like dict whose message is the body's first line)."""

    def __init__(self, status: int, body: dict, method: str, path: str, *, retry_after: str | None = None):
        self.status = status
        self.body = body
        self.reason = body.get("reason", "")
        # Retry-After in seconds (RFC 9110 10.2.3; the API server sends delta-seconds), or None.
        text = (retry_after or "").strip()
        self.retry_after = float(text) if text.isdigit() else None
        super().__init__(f"{method} {path}: {status} {one_line(str(body.get('message') or body))}")


def transient(exc: BaseException) -> bool:
    """Whether another try of the same request can succeed: the connection failed (urllib3 or
    socket errors), the server is overloaded (429) or failing (500, 502, 503, 504). Everything else
    — 4xx such as 409 Conflict or 422 Invalid, and any other exception — is final."""
    if isinstance(exc, ApiError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def one_line(text: str, limit: int = 300) -> str:
    """Text for a one-line message: whitespace runs (newlines included) become one space."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def decode_body(raw: bytes, content_type: str = "") -> tuple[object, bool]:
    """(parsed JSON, True), or (the body's text, False) when it is not JSON: a 404 for an
    unserved API group, a proxy's HTML error page, a truncated answer."""
    if not raw:
        return {}, True
    if "json" in content_type.lower() or raw.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(raw), True
        except ValueError:
            pass
    return raw.decode(errors="replace"), False


REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 422: "Invalid"}


@dataclass(frozen=True)
class Cluster:
    """What one discovery pass learnt about a cluster (Kube.discover): everything deploy needs to
    render for THAT cluster."""

    version: str  # gitVersion: v1.31.12+k3s1
    minor: tuple[int, int]  # (1, 31)
    served: frozenset[str]  # group/version pairs the API serves: "traefik.io/v1alpha1", "v1", ...
    helmchart_fields: frozenset[str] | None  # spec properties of the HelmChart CRD; None: not readable
    # CIDRs host-network traffic of each node comes from (node_sources); None: Nodes not readable
    node_sources: tuple[str, ...] | None = None

    def serves(self, api_version: str) -> bool:
        """Whether the cluster serves `api_version` as a manifest writes it: "v1", "apps/v1",
        "traefik.io/v1alpha1"."""
        return api_version in self.served


def node_sources(nodes: Iterable[dict]) -> tuple[str, ...]:
    """The CIDRs (/32, /128) a process on each of `nodes` (Node objects) reaches a pod of another
    node from: its InternalIP (host-gw and direct routes), and the first address of each of its pod
    CIDRs — flannel's VXLAN and WireGuard interfaces carry that address, so K3s's policy controller
    (kube-router) sees host-network traffic from another node coming from it (kube-router issue
    #332). Sorted, without duplicates; a malformed address is skipped."""
    found: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for node in nodes:
        spec, status = node.get("spec") or {}, node.get("status") or {}
        addresses = [a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"]
        for address in addresses:
            with suppress(ValueError):
                found.add(ipaddress.ip_network(address))
        for cidr in spec.get("podCIDRs") or [spec.get("podCIDR")]:
            with suppress(TypeError, ValueError):
                found.add(ipaddress.ip_network(ipaddress.ip_network(cidr, strict=False).network_address))
    return tuple(str(net) for net in sorted(found, key=lambda net: (net.version, net)))


def _kubeconfig_source(kubeconfig: str | None) -> str:
    """Which file(s) a kubeconfig is read from, as kubectl picks them (--kubeconfig, else every
    path in $KUBECONFIG, else ~/.kube/config), named for messages. Raises KubeError naming the
    path(s) and where they came from when none of them exists."""
    if kubeconfig:
        paths, origin = [kubeconfig], "--kubeconfig"
    elif os.environ.get("KUBECONFIG"):
        paths, origin = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p], "$KUBECONFIG"
    else:
        paths, origin = [os.path.expanduser("~/.kube/config")], "the default"
    shown = os.pathsep.join(paths) + f" (from {origin})"
    if not any(os.path.isfile(p) for p in paths):
        raise KubeError(
            f"kubeconfig {shown}: does not exist — fix: {command('kubeconfig')} fetches one from the server, "
            "or pass --kubeconfig PATH"
        )
    # Read through k3stack.reader first: the client's own errors for a file that is not a
    # kubeconfig are tracebacks or several lines ("'str' object does not support item assignment").
    from .kubeconfig import KubeconfigError, check_file

    for path in paths:
        if os.path.isfile(path):
            try:
                check_file(path)
            except KubeconfigError as exc:
                raise KubeError(exc.what, exc.hint) from None
    return shown


class NotServedError(KubeError):
    """The cluster does not serve an API group/version or kind (its CRD is not installed)."""


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _spec_fields(crd: dict) -> frozenset[str]:
    """The spec properties of a CRD's storage version's schema."""
    versions = (crd.get("spec") or {}).get("versions") or []
    chosen = next((v for v in versions if v.get("storage")), versions[0] if versions else {})
    schema = ((chosen.get("schema") or {}).get("openAPIV3Schema") or {}).get("properties") or {}
    return frozenset(((schema.get("spec") or {}).get("properties") or {}).keys())


class Kube:
    """A cluster reached through a kubeconfig (path or default) and optional context."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, *, retries: int = 5):
        # The client (~0.9 s to import) loads only when a cluster is talked to: `inv render`
        # and bootstrap's planning import this module without it.
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        where = _kubeconfig_source(kubeconfig)
        try:
            configuration = client.Configuration()
            config.load_kube_config(
                config_file=kubeconfig or None, context=context or None, client_configuration=configuration
            )
            # urllib3 would otherwise retry 429/503 by itself, unbounded by our backoff and
            # invisible to the request count: this class does the retrying.
            configuration.retries = False
            self.api = client.ApiClient(configuration)
            # Backoff 0.2 s doubling to 5 s with jitter: `retries` + 1 tries, ~6 s at most by default.
            self.policy = retrying(
                transient,
                attempts=retries + 1,
                first=0.2,
                cap=5.0,
                retry_after=lambda exc: getattr(exc, "retry_after", None),
            )
        except (ConfigException, OSError, TypeError, AttributeError, yaml.YAMLError) as exc:
            raise KubeError(
                f"kubeconfig {where}: {exc} — fix: {command('kubeconfig')} fetches one from the server, "
                f"or pass --kubeconfig PATH / set KUBE_CONTEXT"
            ) from None
        self.server = self.api.configuration.host
        self.retries = retries
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._discovered: dict[tuple[str, str], Resource] = {}
        self._discovering = threading.Lock()  # not _lock: _send takes that one to count
        # The last discovery pass (discover()); None before the first.
        self.cluster: Cluster | None = None

    # -- raw requests -----------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body=None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict:
        """One API request, parsed: the JSON object of a 2xx answer.

        `path` is the URL path (/api/v1/..., /apis/...); `query` (name, value) pairs, sent again on every
        try; `body` a dict, sent as JSON (for a non-JSON `content_type` such as
        application/apply-patch+yaml it is dumped as JSON text, which is YAML too); `timeout` the read
        timeout in seconds (connecting: 5 s). Connection errors, 429 (honouring Retry-After) and 500,
        502, 503, 504 are retried with k3stack.retry's backoff, `retries` + 1 tries in all.
        Raises KubeError when the server stays unreachable, for 401 and 403 (not retried, with the fix),
        and for a 2xx body that is not a JSON object (a proxy or web page, not an API server); ApiError
        for any other status, including a 429/5xx still there after the last try."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # The client serialises JSON bodies itself; other types (apply-patch+yaml) go as given
        # text, and JSON is YAML, so those get our dump.
        payload = body if body is None or "json" in content_type else json.dumps(body)
        query = list(query)  # sent again on every retry

        def once():
            response = self._send(method, path, query, headers, payload, timeout)
            data, is_json = decode_body(response.data, response.getheader("Content-Type") or "")
            if not 200 <= response.status < 300 and (not is_json or not isinstance(data, dict)):
                data = {
                    "message": one_line(str(data)) or f"HTTP {response.status}",
                    "reason": REASONS.get(response.status, ""),
                }
            if response.status in RETRY_STATUSES:
                raise ApiError(response.status, data, method, path, retry_after=response.getheader("Retry-After"))
            return response.status, data, is_json

        try:
            status, data, is_json = self.policy(once)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(
                f"cannot reach the Kubernetes API at {self.server} ({_root_cause(exc)}) — is the "
                f"cluster up and this the right kubeconfig/context? {command('kubeconfig')} fetches a "
                f"fresh one"
            ) from None
        if 200 <= status < 300:
            if not is_json or not isinstance(data, dict):
                raise KubeError(
                    f"{method} {path}: the server at {self.server} answered {status} with a body that is not "
                    f"a JSON object ({one_line(str(data), 120)!r}) — is this kubeconfig's server a Kubernetes "
                    f"API server (not a proxy or web page)?"
                )
            return data
        if status == 401:
            raise KubeError(
                f"the API server at {self.server} did not accept our credentials (401) — the "
                f"kubeconfig's certificate or token is wrong or expired; fetch a new one with "
                f"{command('kubeconfig')}"
            )
        if status == 403:
            raise KubeError(
                f"forbidden (403): {one_line(str(data.get('message', '')))} — the kubeconfig's user lacks RBAC "
                f"rights for this; use the cluster's admin kubeconfig ({command('kubeconfig')}) or the "
                f"right --context"
            )
        raise ApiError(status, data, method, path)

    # -- discovery ------------------------------------------------------------------------------
    def discovered(self) -> Cluster:
        """This Kube's discovery: the pass already made (`cluster`), else one now (discover()). A
        Kube serves one run, so a run that asks here in every step discovers once; thread-safe (two
        threads asking at once make one pass). Raises what discover() raises."""
        with self._discovering:
            return self.cluster or self.discover()

    def discover(self) -> Cluster:
        """One discovery pass: the server version, the API groups it serves, the spec fields of
        the HelmChart CRD (what its helm-controller knows) and the addresses the nodes' host-network
        traffic comes from (node_sources). Four requests, each call; the result is also kept as
        `cluster` (discovered() reuses it)."""
        version = self.request("GET", "/version")
        served = {"v1"}
        for group in self.request("GET", "/apis").get("groups") or []:
            served.update(v["groupVersion"] for v in group.get("versions") or [])
        fields = None
        if "helm.cattle.io/v1" in served:
            try:
                crd = self.request("GET", f"{CRDS}/helmcharts.helm.cattle.io")
            except (ApiError, KubeError):
                crd = None  # not allowed to read CRDs: the caller renders for the oldest controller
            if crd is not None:
                fields = _spec_fields(crd)
        git = str(version.get("gitVersion") or "")
        major = int("".join(c for c in str(version.get("major", "")) if c.isdigit()) or 0)
        minor = int("".join(c for c in str(version.get("minor", "")) if c.isdigit()) or 0)
        try:
            sources = node_sources(self.request("GET", "/api/v1/nodes").get("items") or [])
        except (ApiError, KubeError):
            sources = None  # not allowed to list Nodes: policies from nodes stay deny-only
        self.cluster = Cluster(git, (major, minor), frozenset(served), fields, sources)
        return self.cluster

    # -- resources --------------------------------------------------------------------------
    def resource(self, api_version: str, kind: str) -> Resource:
        """Where a kind lives in the REST API: from k3stack.kinds when registered (no request), else
        from the API group/version's discovery document (GET /api/v1 or /apis/<group>/<version>, once per
        kind and Kube; subresources such as pods/log skipped). Raises NotServedError when the cluster does
        not serve the group/version (its CRD is not installed) or serves it without this kind."""
        key = (api_version, kind)
        if key in KNOWN:
            return KNOWN[key]
        if key not in self._discovered:
            prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self.request("GET", prefix)
            except ApiError as exc:
                raise NotServedError(
                    f"the cluster does not serve {api_version} (needed for {kind}): is its CRD "
                    f"installed? ({exc.status})"
                ) from None
            for item in listing.get("resources", []):
                if item["kind"] == kind and "/" not in item["name"]:
                    self._discovered[key] = Resource(prefix, item["name"], item["namespaced"])
                    break
            else:
                raise NotServedError(f"the cluster serves {api_version} but has no kind {kind}")
        return self._discovered[key]

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The object as the server has it (GET), or None when it does not exist (404 — also for a
        registered kind whose API group the cluster does not serve). An unregistered kind of an unserved
        group raises NotServedError (see `resource`); any other error status ApiError."""
        try:
            return self.request("GET", self.resource(api_version, kind).path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[dict]:
        """The objects of a kind (one LIST, not paginated) in `namespace`, or in every namespace when it
        is None; `label_selector` and `field_selector` as kubectl's -l and --field-selector. Each item
        gets the apiVersion and kind that list answers leave out. Returns [] on 404 (e.g. a registered kind
        whose API group is not served); an unregistered kind of an unserved group raises NotServedError,
        any other error status ApiError."""
        query = [(k, v) for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v]
        try:
            items = self.request("GET", self.resource(api_version, kind).path(namespace), query=query)["items"]
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
        for item in items:  # lists omit apiVersion/kind on items
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, dry_run: bool = False
    ) -> bool:
        """Delete one object with propagationPolicy=Background (its dependents, such as a Job's pods,
        are deleted by the garbage collector afterwards: kubectl's default cascade). `dry_run`: the
        server checks the deletion without doing it (dryRun=All). Returns True when the server accepted
        the deletion (the object may linger while finalizers run), False when it did not exist (404);
        raises ApiError for any other error status."""
        query = [("propagationPolicy", "Background")] + ([("dryRun", "All")] if dry_run else [])
        try:
            self.request("DELETE", self.resource(api_version, kind).path(namespace, name), query=query)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def apply(self, obj: dict, *, field_manager: str, force: bool = False, dry_run: bool = False) -> dict:
        """Server-side apply (PATCH application/apply-patch+yaml), like `kubectl apply --server-side`."""
        meta = obj["metadata"]
        path = self.resource(obj["apiVersion"], obj["kind"]).path(meta.get("namespace"), meta["name"])
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", path, query=query, body=obj, content_type="application/apply-patch+yaml")

    def log_tail(self, namespace: str, pod: str, container: str, lines: int = 20) -> str:
        """The last `lines` lines of a container's log (like `kubectl logs --tail`), as text. One try
        with a 10 s read timeout; "" when the API is unreachable or answers anything but 200 — logs only
        ever illustrate an error report."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        query = [("container", container), ("tailLines", str(lines))]
        try:
            response = self._send("GET", path, query, {"Accept": "text/plain"}, None, 10)
        except (urllib3.exceptions.HTTPError, OSError):
            return ""  # logs are a hint in an error report, never a reason to fail it
        return response.data.decode(errors="replace") if response.status == 200 else ""

    # -- services, through the API server's service proxy ---------------------------------------
    def proxy(
        self,
        method: str,
        namespace: str,
        service: str,
        port: int,
        path: str,
        *,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> ProxyResponse:
        """One request to a Service's port through the API server (only a kubeconfig needed: no
        port-forward, no public exposure). Not retried: the caller knows whether a retry is safe.
        Any HTTP status is returned; an unreachable API server raises KubeError."""
        with self.proxy_stream(
            method, namespace, service, port, path, body=body, headers=headers, timeout=timeout
        ) as r:
            r.body = r.read()
            return r

    @contextmanager
    def proxy_stream(
        self,
        method: str,
        namespace: str,
        service: str,
        port: int,
        path: str,
        *,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Iterator[ProxyResponse]:
        """Like proxy(), but the body is read by the caller as it arrives (`lines()`); `timeout`
        bounds each read, so a silent backend raises ProxyTimeoutError instead of hanging. Leaving
        the block early drops the connection, which ends the request at the backend too."""
        full = service_proxy_path(namespace, service, port, path)
        all_headers = {"Accept": "*/*", "Content-Type": "application/json", **(headers or {})}
        try:
            # The dict goes as is: the client's REST layer encodes JSON bodies itself.
            response = self._send(method, full, [], all_headers, body, timeout, read=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(
                f"cannot reach {service}:{port} in {namespace} through the Kubernetes API at {self.server} "
                f"({_root_cause(exc)})",
                f"is the API server up (kubectl get --raw /readyz) and the Service's pod ready "
                f"(kubectl -n {namespace} get endpoints {service})?",
            ) from None
        raw = response.response
        finished = False
        try:
            yield ProxyResponse(response.status, dict(raw.headers), raw)
            finished = True
        finally:
            if finished and raw.isclosed():
                raw.release_conn()
            else:
                # Not read to the end (an aborted stream): the connection must not go back
                # to the pool with half a response in it.
                raw.close()

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        payload: str | dict | None,
        timeout: float,
        *,
        read: bool = True,
    ):
        """One counted HTTP request with the kubeconfig's credentials; the response is read
        unless `read` is False (streams: the caller reads `response.response`)."""
        params = self.api.param_serialize(
            method, path, query_params=query, header_params=dict(headers), body=payload, auth_settings=["BearerToken"]
        )
        with self._lock:
            self.requests[method] += 1
        response = self.api.call_api(*params, _request_timeout=(5, timeout))
        if read:
            response.read()
        return response


class ProxyTimeoutError(KubeError):
    """A read through the service proxy got nothing for the whole read timeout."""


class ProxyResponse:
    """A backend's answer through the service proxy: status, headers, and the body, read whole
    (`body`, after Kube.proxy) or as it arrives (`lines()`, inside Kube.proxy_stream)."""

    def __init__(self, status: int, headers: dict[str, str], raw):
        self.status = status
        self.headers = headers
        self.body = b""
        self._raw = raw

    def read(self) -> bytes:
        """The rest of the body, whole (what Kube.proxy stores in `body`).
        Raises ProxyTimeoutError when the backend sends nothing for the read timeout, KubeError when the
        connection breaks."""
        try:
            return self._raw.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _read_error(exc) from None

    def abort(self) -> None:
        """Drop the connection, from any thread (a watchdog): a read blocked on it ends."""
        shutdown = getattr(self._raw, "shutdown", None)  # urllib3 >= 2.3
        if shutdown is not None:
            shutdown()
        else:
            self._raw.close()

    def lines(self) -> Iterator[bytes]:
        """The body line by line as the backend sends it (NDJSON streams, chunked or not)."""
        buffer = b""
        while True:
            try:
                chunk = self._raw.read1(65536)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _read_error(exc) from None
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            yield from (line for line in complete if line.strip())
        if buffer.strip():
            yield buffer

    def json(self):
        """The body as JSON (after Kube.proxy); None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        """What the answer says went wrong: a backend's {"error"}, the API server's Status
        message (no endpoints, connection refused), or the start of the body."""
        data = self.json()
        if isinstance(data, dict):
            return str(data.get("error") or data.get("message") or data.get("detail") or data)
        return self.body[:200].decode(errors="replace").strip() or f"HTTP {self.status}"


def service_proxy_path(namespace: str, service: str, port: int, path: str) -> str:
    """The API server path that proxies to port `port` of Service `service` (the services/proxy
    subresource): /api/v1/namespaces/NS/services/NAME:PORT/proxy/PATH. Namespace and service are
    percent-encoded; `path` (leading / optional, a query string allowed) goes as given."""
    return f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}:{port}/proxy/{path.lstrip('/')}"


def _read_error(exc: BaseException) -> KubeError:
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return ProxyTimeoutError(f"no data for the read timeout ({_root_cause(exc)})")
    return KubeError(f"the connection through the service proxy broke ({_root_cause(exc)})")


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    text = str(exc)
    return text.split("] ")[-1] if "] " in text else text or type(exc).__name__
