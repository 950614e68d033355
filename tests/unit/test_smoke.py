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
    assert config.models == ("mistral", "llama3.1:8b")
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
