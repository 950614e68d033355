"""The smoke runner (concurrency, retries until a deadline, final failures) and its small parts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from pathlib import Path

import pytest
import websocket

from k3stack import ollama as ol
from k3stack import settings
from k3stack import smoke as sm


def sleeper(seconds: float, detail: str = "ok"):
    def run() -> str:
        time.sleep(seconds)
        return detail

    return run


def test_checks_run_concurrently():
    # Each check waits until all four are running: one after the other, the first would time out.
    everyone = threading.Barrier(4, timeout=5)

    def meet() -> str:
        everyone.wait()
        return "met"

    checks = [sm.Check(f"c{i}", "cluster", meet) for i in range(4)]
    report = sm.run_checks(checks, deadline=10, interval=0.1)
    assert report.ok, [r.reason for r in report.results]
    assert [r.name for r in report.results] == ["c0", "c1", "c2", "c3"]  # in the order given
    assert [r.detail for r in report.results] == ["met"] * 4


def test_a_failing_check_is_retried_until_it_passes():
    tries = []

    def flaky() -> str:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise sm.CheckFailed("not yet", "wait")
        return "now"

    result = sm.run_checks([sm.Check("flaky", "public", flaky)], deadline=5, interval=0.05).results[0]
    assert (result.ok, result.detail, result.attempts) == (True, "now", 3)


def test_a_check_failing_until_the_deadline_reports_reason_and_hint():
    def never() -> str:
        raise sm.CheckFailed("still broken", "fix it")

    started = time.monotonic()
    result = sm.run_checks([sm.Check("never", "public", never)], deadline=0.5, interval=0.1).results[0]
    assert not result.ok
    assert (result.reason, result.hint) == ("still broken", "fix it")
    assert result.attempts >= 3
    assert time.monotonic() - started < 1.0


def test_a_final_failure_is_not_retried_and_other_errors_become_reasons():
    def refused() -> str:
        raise sm.CheckFailed("password refused", final=True)

    def broken() -> str:
        raise ConnectionResetError("peer reset")

    report = sm.run_checks(
        [sm.Check("refused", "public", refused), sm.Check("broken", "public", broken)], deadline=0.3, interval=0.1
    )
    assert report.results[0].attempts == 1
    assert report.results[1].reason == "ConnectionResetError: peer reset"
    assert not report.ok


def test_parse_connect_to_takes_curls_two_forms():
    assert sm.parse_connect_to(["chat.example.com:443:10.0.0.5", "chat.example.com:80:127.0.0.1:8080"]) == {
        ("chat.example.com", 443): ("10.0.0.5", 443),
        ("chat.example.com", 80): ("127.0.0.1", 8080),
    }
    with pytest.raises(ValueError, match="expected HOST:PORT:ADDRESS"):
        sm.parse_connect_to(["chat.example.com"])


def test_certificate_host_matching_knows_wildcards():
    cert = sm.CertInfo("R3", "x", dt.datetime.now(dt.UTC), ("*.example.com", "example.com"))
    assert cert.matches("chat.example.com")
    assert cert.matches("example.com")
    assert not cert.matches("a.chat.example.com")
    assert not cert.matches("example.org")
    assert sm.CertInfo("(STAGING) Let's Encrypt / (STAGING) Ersatz Edamame E1", "x", cert.not_after, ()).staging


def test_config_from_settings_takes_tag_hosts_models_and_keeps_secrets_out_of_repr():
    values = settings.load(
        env_dir=Path("/nonexistent"),
        environ={"DOMAIN": "example.com", "ACME_EMAIL": "ops@example.com", "OLLAMA_MODELS": "mistral,llama3.1:8b"},
    )
    config = sm.SmokeConfig.from_settings(
        values, {"WEBUI_ADMIN_PASSWORD": "admin-pass-123456", "NETDATA_PASSWORD": "netdata-pass-123"}, insecure=True
    )
    assert (config.chat_host, config.monitor_host) == ("chat.example.com", "monitor.example.com")
    assert config.webui_version == "v0.11.0"
    assert config.models == ("mistral", "llama3.1:8b", "nomic-embed-text:v1.5")  # the embedding model too
    assert config.admin_email == "admin@example.com"
    assert config.insecure
    assert sorted(config.secrets()) == ["admin-pass-123456", "netdata-pass-123"]
    assert "admin-pass-123456" not in repr(config)
    assert "netdata-pass-123" not in repr(config)


def test_optional_settings_feed_deadline_ca_bundle_resolve_and_pull_options():
    base = settings.load(env_dir=Path("/nonexistent"), environ={"DOMAIN": "example.com", "ACME_EMAIL": "o@example.com"})
    assert sm.SmokeConfig.from_settings(base, {}).deadline == 120
    extended = dataclasses.replace(
        base,
        values={
            **base.values,
            "SMOKE_TIMEOUT": "30",
            "SMOKE_CA_BUNDLE": "/etc/ssl/own-ca.pem",
            "SMOKE_RESOLVE": "chat.example.com:443:10.0.0.5, monitor.example.com:443:10.0.0.5",
            "OLLAMA_PULL_STALL_SECONDS": "90",
            "OLLAMA_PULL_ATTEMPTS": "6",
        },
    )
    config = sm.SmokeConfig.from_settings(extended, {}, deadline=5)
    assert config.deadline == 5  # a flag wins over the setting
    assert config.ca_bundle == "/etc/ssl/own-ca.pem"
    assert config.connect_to == {
        ("chat.example.com", 443): ("10.0.0.5", 443),
        ("monitor.example.com", 443): ("10.0.0.5", 443),
    }
    client = ol.Ollama.from_settings(None, extended, attempts=2)
    assert (client.namespace, client.stall_seconds, client.attempts) == ("llm-stack", 90.0, 2)


def test_an_unknown_group_is_refused_rather_than_running_nothing():
    config = sm.SmokeConfig("a", "b", "chat.example.com", "monitor.example.com", (), "v1", "a@example.com", "")
    with pytest.raises(ValueError, match=r"unknown check group.*publc: choose from cluster, in-cluster, public"):
        sm.smoke(None, config, only=["publc"])


class Packets:
    """A websocket that has `packets` to receive (then times out) and records what is sent."""

    def __init__(self, *packets):
        self.packets = list(packets)
        self.sent: list[str] = []

    def gettimeout(self) -> float:
        return 0.2

    def recv(self):
        if not self.packets:
            raise websocket.WebSocketTimeoutException("timed out")
        return self.packets.pop(0)

    def send(self, data: str) -> None:
        self.sent.append(data)


def test_engineio_packets_answer_pings_and_skip_what_is_not_awaited():
    ws = Packets("2", b"\x00binary", '42["other",{}]', '431[{"id":"u1"}]')
    assert sm._engineio_packet(ws, "431", "answer to user-join") == '431[{"id":"u1"}]'
    assert ws.sent == ["3"]  # the ping was answered, as Engine.IO clients must


def test_engineio_packet_not_arriving_or_a_closed_socket_is_a_check_failure():
    with pytest.raises(sm.CheckFailed, match=r"^no answer to user-join within 0s$"):
        sm._engineio_packet(Packets('42["other",{}]'), "431", "answer to user-join")

    class Closed(Packets):
        def recv(self):
            raise websocket.WebSocketConnectionClosedException("closed by peer")

    with pytest.raises(sm.CheckFailed, match=r"^no Engine.IO open packet: the websocket closed \(closed by peer\)$"):
        sm._engineio_packet(Closed(), "0", "Engine.IO open packet")


def test_the_websocket_check_never_asks_for_polling():
    assert "transport=websocket" in sm.WEBSOCKET_PATH
    assert "polling" not in sm.WEBSOCKET_PATH


def test_a_bug_in_a_check_is_reported_at_once_not_retried_until_the_deadline():
    calls = []

    def buggy() -> str:
        calls.append(1)
        return {}["token"]

    def html_while_starting() -> str:
        calls.append(2)
        raise json.JSONDecodeError("Expecting value", "<html>", 0)

    started = time.monotonic()
    report = sm.run_checks(
        [sm.Check("buggy", "public", buggy), sm.Check("starting", "public", html_while_starting)],
        deadline=0.5,
        interval=0.1,
    )
    bug, starting = report.results
    assert (bug.ok, bug.attempts, calls.count(1)) == (False, 1, 1)
    assert bug.reason == "unexpected KeyError: 'token' (a bug in this check)"
    assert starting.attempts >= 3  # a body that is not JSON yet is a state, retried
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("status", "location", "ok"),
    [
        (308, "https://chat.example.com/", True),
        (301, "https://CHAT.example.com/path", True),  # host names compare case-insensitively
        (308, "https://chat.example.com.evil.example/", False),  # a prefix is not the host
        (308, "https://chat.example.com@evil.example/", False),
        (308, "http://chat.example.com/", False),  # still plain HTTP
        (200, "https://chat.example.com/", False),
    ],
)
def test_the_redirect_check_wants_https_to_exactly_the_chat_host(status, location, ok):
    values = settings.load(
        env_dir=Path("/nonexistent"), environ={"DOMAIN": "example.com", "ACME_EMAIL": "o@example.com"}
    )
    checks = sm.Checks(None, sm.SmokeConfig.from_settings(values, {}))  # type: ignore[arg-type]
    checks.browser = type("B", (), {"request": lambda self, m, url: sm.Answer(status, {"location": location}, b"")})()
    if ok:
        assert checks.http_redirect() == f"{status} → {location}"
    else:
        with pytest.raises(sm.CheckFailed, match="plain HTTP answered"):
            checks.http_redirect()


def test_a_digest_pinned_image_still_gives_its_version():
    values = settings.load(
        env_dir=Path("/nonexistent"),
        environ={"DOMAIN": "example.com", "ACME_EMAIL": "o@example.com",
                 "OPEN_WEBUI_IMAGE": "ghcr.io/open-webui/open-webui:v0.11.0@sha256:" + "c" * 64},
    )  # fmt: skip
    assert sm.SmokeConfig.from_settings(values, {}).webui_version == "v0.11.0"


# -- credentials only over a verified connection -------------------------------------------------
class RecordingServer:
    """An HTTPS server on loopback serving `cert`, recording every byte a client sends after the
    handshake, answering each request 200 with a sign-in token (as Open WebUI would)."""

    def __init__(self, cert: tuple[bytes, bytes], tmp_path: Path):
        import socket
        import ssl

        (tmp_path / "tls.crt").write_bytes(cert[0])
        (tmp_path / "tls.key").write_bytes(cert[1])
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import ssl

        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                with self.tls.wrap_socket(raw, server_side=True) as sock:
                    sock.settimeout(2)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:  # a handshake and nothing else (smoke peeking at the certificate)
                        continue
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                        0,
                    )
                    while len(body) < length:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        body += chunk
                    self.received.append(head + b"\r\n\r\n" + body)
                    answer = json.dumps({"token": "a-token", "data": []}).encode()
                    sock.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                        + answer
                    )
            except (OSError, ssl.SSLError):
                raw.close()

    def close(self) -> None:
        self.listener.close()


CHAT, MONITOR = "chat.smoke.test", "monitor.smoke.test"
ADMIN_PASSWORD, NETDATA_PASSWORD = "admin-password-1234", "netdata-password-5678"


def tls_config(server: RecordingServer, **overrides) -> sm.SmokeConfig:
    return sm.SmokeConfig(
        **{
            "stack_namespace": "llm-stack",
            "monitoring_namespace": "monitoring",
            "chat_host": CHAT,
            "monitor_host": MONITOR,
            "models": (),
            "webui_version": "v0.11.0",
            "admin_email": "admin@smoke.test",
            "admin_password": ADMIN_PASSWORD,
            "netdata_password": NETDATA_PASSWORD,
            "connect_to": {(CHAT, 443): ("127.0.0.1", server.port), (MONITOR, 443): ("127.0.0.1", server.port)},
            "request_timeout": 3,
            **overrides,
        }
    )


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(cert: tuple[bytes, bytes]) -> RecordingServer:
        server = RecordingServer(cert, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def pin_staging_roots(monkeypatch, tmp_path, ca) -> None:
    """Make `ca` the one pinned staging root (Let's Encrypt's key is not ours to sign with)."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    path = ca.write(tmp_path / "staging-roots.pem")
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    monkeypatch.setattr(sm, "STAGING_ROOTS", path)
    monkeypatch.setattr(sm, "STAGING_ROOT_FINGERPRINTS", {hashlib.sha256(der).hexdigest(): "test staging root"})


def every_credential_check(config: sm.SmokeConfig) -> dict[str, sm.CheckFailed | str]:
    """Sign-in, the model list, the websocket and Netdata's basic auth: what each ended with."""
    checks = sm.Checks(None, config)  # type: ignore[arg-type] - no cluster needed for these
    outcome: dict[str, sm.CheckFailed | str] = {}
    for name, run in (
        ("signin", checks._ask_for_token),
        ("models", checks.signin_models),
        ("websocket", lambda: checks.browser.websocket(f"wss://{CHAT}/ws/socket.io/?EIO=4&transport=websocket")),
        ("netdata", checks.netdata_auth),
    ):
        try:
            outcome[name] = str(run())
        except sm.CheckFailed as failure:
            outcome[name] = failure
    return outcome


@pytest.mark.parametrize("insecure", [True, False])
def test_a_self_signed_certificate_gets_no_request_and_no_credential(serve, insecure):
    from tests.testbed.ingress import TestCA

    server = serve(TestCA("Self Signed Inc").issue([CHAT, MONITOR]))
    outcome = every_credential_check(tls_config(server, insecure=insecure))
    assert all(isinstance(o, sm.CheckFailed) for o in outcome.values()), outcome
    assert server.connections >= 4  # it was reached (and the cert peeked at to explain) ...
    # ... but not one byte of a request: no password, no header (the count only: never print what was sent)
    assert not server.received, f"{len(server.received)} request(s) sent to a server that failed verification"
    failure = outcome["signin"]
    assert isinstance(failure, sm.CheckFailed)
    if insecure:
        assert failure.reason.startswith("--insecure accepts only certificates of the Let's Encrypt staging CA")
        assert failure.final
        assert failure.hint.startswith("drop --insecure")
    else:
        assert failure.reason.startswith(f"certificate for {CHAT} not valid: self-signed certificate in")
    assert ADMIN_PASSWORD not in failure.reason + failure.hint


def test_insecure_refuses_a_certificate_that_only_calls_itself_staging(serve):
    from tests.testbed.ingress import TestCA

    fake = TestCA("(STAGING) Pretend Pear X1")  # Let's Encrypt's name, another key
    server = serve(fake.issue([CHAT, MONITOR]))
    outcome = every_credential_check(tls_config(server, insecure=True))
    assert not server.received, f"{len(server.received)} request(s) sent to a server that failed verification"
    failure = outcome["signin"]
    assert isinstance(failure, sm.CheckFailed)
    assert failure.final
    assert "does not chain to its staging roots" in failure.reason
    assert "(issuer (STAGING) Pretend Pear X1, for chat.smoke.test, monitor.smoke.test)" in failure.reason
    assert failure.hint.startswith("the certificate only calls itself (STAGING): it is not from Let's Encrypt")


def test_insecure_accepts_a_certificate_chaining_to_the_pinned_staging_root(serve, monkeypatch, tmp_path):
    """The positive control: the recording server does see what a verified client sends."""
    from tests.testbed.ingress import TestCA

    root = TestCA("(STAGING) Pretend Pear X1")
    pin_staging_roots(monkeypatch, tmp_path, root)
    server = serve(root.issue([CHAT, MONITOR]))
    checks = sm.Checks(None, tls_config(server, insecure=True))  # type: ignore[arg-type]
    assert checks._ask_for_token() == "a-token"
    [request] = server.received
    assert request.startswith(b"POST /api/v1/auths/signin HTTP/1.1\r\n")
    assert ADMIN_PASSWORD.encode() in request
    # a certificate of that root for another host is still refused, before the request
    server.received.clear()
    other = serve(root.issue(["other.smoke.test"]))
    with pytest.raises(sm.CheckFailed) as caught:
        sm.Checks(None, tls_config(other, insecure=True))._ask_for_token()  # type: ignore[arg-type]
    assert "Hostname mismatch" in caught.value.reason
    assert not other.received


def test_credentials_are_never_sent_over_plain_http():
    config = sm.SmokeConfig("s", "m", CHAT, MONITOR, (), "v0.11.0", "a@b.c", ADMIN_PASSWORD)
    browser = sm.Browser(config)
    with pytest.raises(ValueError, match="credentials go over verified https only"):
        browser.request("POST", f"http://{CHAT}/api/v1/auths/signin", body={"password": "x"})
    with pytest.raises(ValueError, match="credentials go over verified https only"):
        browser.request("GET", f"http://{MONITOR}/", headers={"Authorization": "Basic eDp5"})
