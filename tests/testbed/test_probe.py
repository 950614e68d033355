"""The kubelet's probes as the node simulator runs them (probe.py), against local servers."""

from __future__ import annotations

import http.server
import socket
import threading
from typing import ClassVar

import pytest

from tests.testbed.probe import Verdict, judge, port_of, run


class Handler(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, int]] = {"/ok": 200, "/moved": 302, "/missing": 404, "/broken": 500}
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self):
        Handler.seen.append(dict(self.headers))
        self.send_response(self.answers.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def container(port, **probes):
    return {"name": "app", "ports": [{"name": "http", "containerPort": port}], **probes}


def http_probe(path, port="http", **extra):
    return {"httpGet": {"path": path, "port": port, **extra}}


@pytest.mark.parametrize(("path", "failure"), [("/ok", None), ("/moved", None), ("/missing", 404), ("/broken", 500)])
def test_an_http_probe_passes_on_200_to_399_only(server, path, failure):
    result = run(http_probe(path), container(server), "127.0.0.1")
    assert result == (None if failure is None else f"HTTP probe failed with statuscode: {failure}")


def test_a_refused_connection_reads_as_the_kubelets_error(closed_port):
    result = run(http_probe("/health"), container(closed_port), "127.0.0.1")
    url = f"http://127.0.0.1:{closed_port}/health"
    assert result == f'Get "{url}": dial tcp 127.0.0.1:{closed_port}: connect: connection refused'


def test_a_tcp_probe_passes_when_a_connection_opens(server, closed_port):
    assert run({"tcpSocket": {"port": server}}, container(server), "127.0.0.1") is None
    failed = run({"tcpSocket": {"port": "http"}}, container(closed_port), "127.0.0.1")
    assert failed == f"dial tcp 127.0.0.1:{closed_port}: connect: connection refused"


def test_headers_and_a_numeric_port_reach_the_server(server):
    Handler.seen.clear()
    probe = http_probe("/ok", port=server, httpHeaders=[{"name": "X-Probe", "value": "yes"}])
    assert run(probe, container(1), "127.0.0.1") is None
    assert Handler.seen[-1]["X-Probe"] == "yes"
    assert Handler.seen[-1]["User-Agent"].startswith("kube-probe/")


def test_exec_probes_are_not_run_and_an_unknown_port_name_is_a_bed_bug():
    assert run({"exec": {"command": ["false"]}}, container(1), "127.0.0.1") is None
    assert port_of("8080", container(1)) == 8080
    with pytest.raises(ValueError, match="no port named 'web'"):
        port_of("web", container(1))


def test_a_wrong_readiness_path_makes_the_pod_unready_with_the_kubelets_event(server):
    pod = [container(server, readinessProbe=http_probe("/missing"))]
    verdict = judge(pod, "127.0.0.1", None)
    assert verdict == Verdict(
        frozenset(), frozenset({"app"}), ("app", "Readiness probe failed: HTTP probe failed with statuscode: 404")
    )
    assert judge([container(server, readinessProbe=http_probe("/ok"))], "127.0.0.1", None) == Verdict(
        frozenset(), frozenset(), None
    )


def test_a_startup_probe_gates_readiness_and_is_not_run_once_passed(server):
    failing_startup = [container(server, startupProbe=http_probe("/broken"), readinessProbe=http_probe("/ok"))]
    first = judge(failing_startup, "127.0.0.1", None)
    assert first.unstarted == first.unready == {"app"}
    assert first.event == ("app", "Startup probe failed: HTTP probe failed with statuscode: 500")
    started = judge(failing_startup, "127.0.0.1", Verdict(frozenset(), frozenset({"app"}), None))
    assert started == Verdict(frozenset(), frozenset(), None)  # passed once before: only readiness counts


def test_only_the_failing_container_is_unready_and_the_first_failure_is_the_event(server, closed_port):
    pod = [
        {"name": "a", "readinessProbe": http_probe("/ok", port=server)},
        {"name": "b", "readinessProbe": http_probe("/missing", port=server)},
        {"name": "c", "readinessProbe": {"tcpSocket": {"port": closed_port}}},
    ]
    verdict = judge(pod, "127.0.0.1", None)
    assert verdict.unready == {"b", "c"}
    assert verdict.event == ("b", "Readiness probe failed: HTTP probe failed with statuscode: 404")
