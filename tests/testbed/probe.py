"""The kubelet's startup and readiness probes, run by the node simulator against the real process
behind a pod's IP (kubernetes pkg/probe/http, pkg/probe/tcp and pkg/kubelet/prober, v1.20–1.30):

- httpGet: success when the status is 200–399 (redirects are not followed; the kubelet counts a
  redirect to another host as success too); the Host is the pod IP unless `host` is set; HTTPS is
  not verified. A named port is looked up in the container's ports.
- tcpSocket: success when a connection opens.
- exec and grpc are not run: the bed has no container to run a command in (PostgreSQL's and
  Redis's exec probes pass here; their processes have their own readiness check in components.py).
- A container with a startupProbe is not started (and not ready) until it passes once; after
  that only its readinessProbe decides. A container without a readinessProbe is ready once started.
- Liveness probes are not run: restarting a process is the real stack's business (stack.py).

A failure reads as the kubelet's event message: `Readiness probe failed: HTTP probe failed with
statuscode: 404`, `Startup probe failed: Get "http://10.0.0.5:8080/health": dial tcp
10.0.0.5:8080: connect: connection refused`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

PROBE_TIMEOUT = 2.0  # seconds at most per probe: the simulator is one thread for every pod


@dataclass(frozen=True)
class Verdict:
    """What the probes of one pod's containers said: names of containers not started (startup
    probe not passed yet) and not ready, and the (container, event message) of the first failure."""

    unstarted: frozenset[str]
    unready: frozenset[str]
    event: tuple[str, str] | None


def judge(containers: list[dict], ip: str, previous: Verdict | None) -> Verdict:
    """Run the probes of `containers` (a pod spec's) against `ip`; `previous` is this pod's last
    verdict (a startup probe that passed once is not run again)."""
    unstarted, unready, event = set(), set(), None
    for container in containers:
        name = container["name"]
        started = previous is not None and name not in previous.unstarted
        checks = [] if started else [("Startup", container.get("startupProbe"))]
        checks.append(("Readiness", container.get("readinessProbe")))
        for kind, probe in checks:
            failure = run(probe, container, ip) if probe else None
            if failure is None:
                continue
            if kind == "Startup":
                unstarted.add(name)
            unready.add(name)
            event = event or (name, f"{kind} probe failed: {failure}")
            break
    return Verdict(frozenset(unstarted), frozenset(unready), event)


def run(probe: dict, container: dict, ip: str) -> str | None:
    """None when `probe` passes against the container at `ip`, else the kubelet's failure output."""
    timeout = min(float(probe.get("timeoutSeconds") or 1), PROBE_TIMEOUT)
    if "httpGet" in probe:
        return _http(probe["httpGet"], container, ip, timeout)
    if "tcpSocket" in probe:
        target = probe["tcpSocket"]
        port = port_of(target["port"], container)
        host = target.get("host") or ip
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            return f"dial tcp {host}:{port}: {_go_error(exc)}"
    return None  # exec, grpc: not run (see the module's docstring)


def port_of(port: int | str, container: dict) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container['name']} has no port named {port!r}")


def _http(get: dict, container: dict, ip: str, timeout: float) -> str | None:
    host = get.get("host") or ip
    port = port_of(get["port"], container)
    scheme = str(get.get("scheme") or "HTTP").lower()
    path = get.get("path") or "/"
    url = f"{scheme}://{host}:{port}{path}"
    if scheme == "https":
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE  # the kubelet's way
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=unverified)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": "kube-probe/1.30", "Accept": "*/*"}
    headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    except OSError as exc:
        return f'Get "{url}": dial tcp {host}:{port}: {_go_error(exc)}'
    except http.client.HTTPException as exc:
        return f'Get "{url}": {type(exc).__name__}'
    finally:
        connection.close()
    if 200 <= status < 400:
        return None
    return f"HTTP probe failed with statuscode: {status}"


def _go_error(exc: OSError) -> str:
    """Go's net error words for what Python raised."""
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(exc, TimeoutError):  # socket.timeout is its alias
        return "i/o timeout"
    return f"connect: {exc.strerror or exc}"
