"""Kube's retry and error handling against a small HTTP server on loopback that answers like an
API server under load (429/503 with Retry-After, then success)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k3stack.kube import ApiError, Kube, KubeError


@pytest.fixture
def api_server(tmp_path):
    answers: list[tuple[int, dict]] = []
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            status, body = answers.pop(0) if answers else (200, {"items": []})
            # A str body goes as plain text, as the API server answers for an unserved group.
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            plain = isinstance(body, str)
            self.send_header("Content-Type", "text/plain; charset=utf-8" if plain else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if status in (429, 503):
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(payload)

        def do_DELETE(self):
            self.do_GET()

        def do_PATCH(self):
            seen.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
        f"    server: http://127.0.0.1:{server.server_address[1]}\nusers:\n- name: u\n  user:\n"
        f"    token: test-token\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n"
        f"current-context: x\n"
    )
    yield Kube(str(config), retries=3), answers, seen
    server.shutdown()


def test_429_and_503_are_retried_then_succeed(api_server):
    kube, answers, seen = api_server
    answers += [(429, {"message": "too many requests"}), (503, {"message": "unavailable"})]
    assert kube.list("v1", "Namespace") == []
    assert len(seen) == 3
    assert kube.requests["GET"] == 3


def test_retries_are_bounded(api_server):
    kube, answers, seen = api_server
    answers += [(503, {"message": "etcd leader changed"})] * 5
    with pytest.raises(ApiError, match="503 etcd leader changed"):
        kube.list("v1", "Namespace")
    assert len(seen) == 4  # the first try and three retries


def test_a_client_error_is_not_retried(api_server):
    kube, answers, seen = api_server
    answers += [(422, {"kind": "Status", "message": "invalid", "reason": "Invalid"})]
    with pytest.raises(ApiError) as error:
        kube.list("v1", "Namespace")
    assert error.value.status == 422
    assert len(seen) == 1


def test_401_is_explained(api_server):
    kube, answers, _ = api_server
    answers += [(401, {"message": "Unauthorized"})]
    with pytest.raises(Exception, match=r"did not accept our credentials \(401\).*`inv kubeconfig`"):
        kube.list("v1", "Namespace")


@pytest.mark.parametrize("content_type", ["application/merge-patch+json", "application/apply-patch+yaml"])
def test_bodies_are_sent_as_one_json_document(api_server, content_type):
    kube, _, seen = api_server
    kube.request("PATCH", "/api/v1/namespaces/x", body={"metadata": {"labels": {"a": "b"}}}, content_type=content_type)
    assert json.loads(seen[0]) == {"metadata": {"labels": {"a": "b"}}}


# -- bodies that are not JSON (issue 13): never a JSONDecodeError, always one line ----------------
def test_a_plain_text_404_of_an_unserved_group_is_not_found(api_server):
    kube, answers, _ = api_server
    answers += [(404, "404 page not found\n")]
    assert kube.list("traefik.io/v1alpha1", "Middleware", "mon") == []
    answers += [(404, "404 page not found\n")]
    assert kube.get("traefik.io/v1alpha1", "Middleware", "netdata-auth", "mon") is None
    answers += [(404, "404 page not found\n")]
    assert kube.delete("traefik.io/v1alpha1", "Middleware", "netdata-auth", "mon") is False


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, "Internal Server Error\n  at line 2\n  at line 3"),
        (502, "<html><body><h1>502 Bad Gateway</h1>\n</body></html>"),
        (409, '{"kind": "Status", "message": "trunc'),
    ],
)
def test_an_error_body_that_is_not_json_becomes_one_line(api_server, status, body):
    kube, answers, _ = api_server
    answers += [(status, body)] * 4
    with pytest.raises(ApiError) as error:
        kube.list("v1", "Namespace")
    assert error.value.status == status
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"GET /api/v1/namespaces: {status} ")


def test_a_success_that_is_not_json_is_one_explained_line(api_server):
    kube, answers, _ = api_server
    answers += [(200, "<html>\n<title>Sign in</title>\n</html>")]
    with pytest.raises(KubeError) as error:
        kube.list("v1", "Namespace")
    assert "\n" not in str(error.value)
    assert "not a JSON object" in str(error.value)
    assert "Kubernetes API server" in str(error.value)


def test_a_multi_line_status_message_becomes_one_line(api_server):
    kube, answers, _ = api_server
    answers += [(422, {"kind": "Status", "reason": "Invalid", "message": "spec.ports[0]: Invalid value\nand more"})]
    with pytest.raises(ApiError) as error:
        kube.list("v1", "Namespace")
    assert "\n" not in str(error.value)
    assert error.value.body["message"].startswith("spec.ports[0]")


def test_a_kubeconfig_that_is_not_one_is_one_line(tmp_path):
    """Issue 15 #5: the client said "'str' object does not support item assignment"."""
    path = tmp_path / "notes.txt"
    path.write_text("just some text, not a kubeconfig\n")
    with pytest.raises(KubeError) as error:
        Kube(str(path))
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert "fix:" in message
