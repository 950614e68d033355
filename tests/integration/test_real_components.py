"""The stack against its REAL components in the test bed (real Open WebUI from PyPI at the image's
version, PostgreSQL 15, redis-server 7.0, Netdata 1.37), configured from what deploy applies:
the defects the stand-ins hid (issue #12) each have a test here, and nothing is lost for real."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import websocket

from k3stack import deploy as stack
from k3stack import secrets as sec
from k3stack import settings
from k3stack import smoke as sm
from k3stack.rollout import RolloutError
from k3stack.secrets import SecretsError
from tests.testbed import real
from tests.testbed.fake_ollama import layers_for
from tests.testbed.plugin import unavailable
from tests.testbed.real.components import wait_for, webui_api
from tests.testbed.real.plugin import ADMIN_PASSWORD, REDIS_PASSWORD

pytestmark = pytest.mark.timeout(600)

HOSTILE = 'pa ss "wo\'rd" \\ # ; $(x) `y` \x01\nrequirepass other-é'


# -- pins ------------------------------------------------------------------------------------------
def test_the_beds_open_webui_is_the_version_of_the_image_tag():
    image = settings.BY_NAME["OPEN_WEBUI_IMAGE"].default
    tag = image.rsplit(":", 1)[1].split("@")[0].removeprefix("v")
    assert real.webui_version() == tag, (
        f"tests/testbed/real/open-webui.txt pins open-webui {real.webui_version()} but OPEN_WEBUI_IMAGE is {image}: "
        "bump both together"
    )
    example = (settings.REPO / "env" / "example.env").read_text()
    assert f"OPEN_WEBUI_IMAGE={image}\n" in example
    installed = list((real.webui_venv() / "lib").glob("python3.*/site-packages/open_webui-*.dist-info"))
    if installed:  # the cached venv, when there is one, holds that version too
        assert [p.name for p in installed] == [f"open_webui-{tag}.dist-info"]


# -- redis.conf by redis' own rules -----------------------------------------------------------------
def _redis(tmp_path: Path, conf: str) -> tuple[subprocess.Popen, Path, Path]:
    if not shutil.which("redis-server"):
        unavailable(f"redis-server not installed: run `{real.INSTALL}`")
    config, sock, log = tmp_path / "redis.conf", tmp_path / "redis.sock", tmp_path / "redis.log"
    config.write_text(conf)
    server = subprocess.Popen(
        ["redis-server", str(config), "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp_path)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return server, sock, log


def _auth(sock_path: Path, password: str) -> bytes:
    def bulk(*parts: bytes) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        sock.sendall(bulk(b"AUTH", password.encode()))
        return sock.recv(256)


def test_the_real_redis_server_loads_the_rendered_config_with_any_password(tmp_path):
    server, sock, log = _redis(tmp_path, sec.redis_conf(HOSTILE))
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() is None, log.read_text()
        assert _auth(sock, HOSTILE) == b"+OK\r\n"
        assert _auth(sock, "other-é").startswith(b"-WRONGPASS")  # the newline added no directive
    finally:
        server.terminate()
        server.wait(10)
    assert "pa ss" not in log.read_text(errors="replace")


def test_the_unquoted_config_line_of_old_is_refused_and_leaks_the_password(tmp_path):
    """Why: what k3stack wrote before (printf 'requirepass %s'); redis-server refuses it and
    prints the line, password included, into its log."""
    server, _, log = _redis(tmp_path, 'requirepass pass word"x\nappendonly yes\n')
    assert server.wait(10) != 0
    text = log.read_text()
    assert "FATAL CONFIG FILE ERROR" in text
    assert 'pass word"x' in text


# -- against the deployed real stack --------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_signins_counted(request):
    """Open WebUI's sign-in rate limit (15 per user in 3 minutes) is not what these tests test."""
    if "real_stack" in request.fixturenames:
        request.getfixturevalue("real_stack").forget_signins()


def _signin(stack, email: str, password: str) -> tuple[int, dict | str]:
    return webui_api(stack.webui().ip, "POST", "/api/v1/auths/signin", body={"email": email, "password": password})


def _admin_token(stack) -> str:
    status, data = _signin(stack, stack.plan.settings["WEBUI_ADMIN_EMAIL"], ADMIN_PASSWORD)
    assert status == 200, data
    return data["token"]


def test_open_webui_starts_and_lists_models_without_any_outbound_lookup(real_stack):
    """Its pod's resolver is the bed's recorder: any name Open WebUI looks up (Hugging Face for
    the embedding model, an update check, api.openai.com for a model list, ...) would be listed.
    Cluster names come from /etc/hosts."""
    assert real_stack.dns is not None, "the bed's resolver could not listen on the bridge"
    webui = real_stack.webui()
    status, models = webui_api(webui.ip, "GET", "/api/models", token=_admin_token(real_stack))
    assert status == 200, models
    looked_up = real_stack.dns.names(webui.ip)
    assert looked_up == [], f"Open WebUI looked up: {sorted(set(looked_up))}"
    assert "huggingface" not in webui.process.log.read_text(errors="replace").lower()


def test_every_component_is_configured_from_the_deployed_objects(real_stack):
    kube, ns = real_stack.kube, real_stack.namespace
    container = kube.get("apps/v1", "Deployment", "open-webui", ns)["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in container["env"]}
    assert "WEBUI_SECRET_KEY" not in names  # read from WEBUI_SECRET_KEY_FILE, like the image's start.sh
    assert {"ENABLE_PERSISTENT_CONFIG", "CORS_ALLOW_ORIGIN", "ENABLE_EVALUATION_ARENA_MODELS"} <= names
    redis = kube.get("apps/v1", "Deployment", "redis", ns)["spec"]["template"]["spec"]["containers"][0]
    assert redis["command"] == ["redis-server", "/run/secrets/redis/redis.conf", "--dir", "/data"]
    # The real redis-server runs with the rendered config (a password with spaces and quotes) and
    # never writes the password to its log.
    assert real_stack.components["redis"].process.running
    log = real_stack.components["redis"].process.log.read_text(errors="replace")
    assert REDIS_PASSWORD not in log
    assert "pass word" not in log


def test_the_admin_signs_in_and_no_arena_model_is_listed(real_stack):
    token = _admin_token(real_stack)
    status, data = webui_api(real_stack.webui().ip, "GET", "/api/models", token=token)
    assert status == 200, data
    ids = sorted(m["id"] for m in data["data"])
    assert ids == sorted(real_stack.plan.settings.models)
    assert "arena-model" not in ids


def test_the_websocket_session_is_kept_in_redis(real_stack):
    config = real_stack.smoke_config()
    checks = sm.Checks(real_stack.kube, config)
    assert checks.websocket().startswith("websocket upgraded, Socket.IO connected, event back through Redis")
    # While a signed-in websocket is open (through the ingress, as the check opens it), its
    # session is in the real Redis; it goes when the websocket closes.
    token = checks._signin()
    ws = sm.Browser(config).websocket(f"wss://{config.chat_host}{sm.WEBSOCKET_PATH}")
    try:
        assert ws.recv().startswith("0{")
        ws.send("40" + json.dumps({"token": token}))
        assert ws.recv().startswith("40{")  # sent before Open WebUI's connect handler stores the session
        assert wait_for(lambda: "open-webui:session_pool" in real_stack.redis_keys("open-webui:*"), timeout=10)
    finally:
        ws.close()
    assert wait_for(lambda: "open-webui:session_pool" not in real_stack.redis_keys("open-webui:*"), timeout=10)


def test_socket_io_refuses_an_origin_other_than_the_chat_url(real_stack):
    ip = real_stack.webui().ip
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://{ip}:8080{sm.WEBSOCKET_PATH}", origin="https://evil.example", suppress_origin=False, timeout=10
        )
    assert refused.value.status_code == 403
    ws = websocket.create_connection(
        f"ws://{ip}:8080{sm.WEBSOCKET_PATH}", origin="https://chat.smoke.test", suppress_origin=False, timeout=10
    )
    try:
        assert ws.recv().startswith("0{")
    finally:
        ws.close()


def test_polling_is_refused_by_the_real_open_webui(real_stack):
    """What the old check asked for: Open WebUI's Socket.IO is websocket-only."""
    status, body = webui_api(real_stack.webui().ip, "GET", "/ws/socket.io/?EIO=4&transport=polling")
    assert status == 400
    assert "transport" in json.dumps(body).lower()


def test_a_changed_setting_reaches_the_real_open_webui_after_a_redeploy(real_stack):
    """ENABLE_PERSISTENT_CONFIG=false: the value in the environment wins over the one Open WebUI
    saved at first start. The rollout also keeps sessions: the key comes from the same file."""
    token = _admin_token(real_stack)
    ip = real_stack.webui().ip
    status, before = webui_api(ip, "GET", "/api/v1/retrieval/embedding", token=token)
    assert status == 200, before
    assert (before["RAG_EMBEDDING_ENGINE"], before["RAG_EMBEDDING_MODEL"]) == ("ollama", "nomic-embed-text:v1.5")
    running = {name: c.process.popen for name, c in real_stack.components.items()}

    new = "mxbai-embed-large:335m"
    real_stack.ollama.library[new] = layers_for(new, [1000, 10])
    real_stack.ollama.install(new)  # what the pipeline's pulls would bring (deploy pulls the embedding model)
    real_stack.deploy(OLLAMA_EMBEDDING_MODEL="mxbai-embed-large:335m")

    # Only Open WebUI's pod template changed: it alone rolled (a new process), nothing else.
    now = {name: c.process.popen for name, c in real_stack.components.items()}
    assert [name for name in running if now[name] is not running[name]] == ["open-webui"]
    status, after = webui_api(ip, "GET", "/api/v1/retrieval/embedding", token=token)
    assert status == 200, after  # the token from before the rollout still holds
    assert after["RAG_EMBEDDING_MODEL"] == "mxbai-embed-large:335m"


def test_a_wrong_readiness_probe_path_fails_the_deploy_with_the_probes_reason(real_stack):
    """The bed's kubelet runs each pod's probes against the process behind it (tests/testbed/
    probe.py): a probe that asks the wrong path never lets the pod be Ready, and deploy says why."""
    plan = stack.make_plan(real_stack.settings(), stack.read_secret_from(real_stack.kube))
    (ollama,) = [m for m in plan.manifests if m.kind == "Deployment" and m.name == "ollama"]
    (container,) = ollama.obj["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/version"
    container["readinessProbe"]["httpGet"]["path"] = "/api/ready"  # Ollama has no such route
    try:
        with pytest.raises(RolloutError) as failed:
            real_stack.deploy_plan(plan, timeout=20)
        message = str(failed.value)
        assert message.startswith("timed out after 20s waiting for deployment.apps/ollama\n")
        unhealthy = "event Warning Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 404"
        assert message.endswith(unhealthy)
        assert "open-webui" not in message.split("event")[0]  # only Ollama is named
    finally:
        real_stack.deploy()  # the stack's own probe again: ready, as later tests expect
    pods = real_stack.kube.list("v1", "Pod", real_stack.namespace, label_selector="app.kubernetes.io/name=ollama")
    assert [
        c["ready"] for p in pods if not p["metadata"].get("deletionTimestamp") for c in p["status"]["containerStatuses"]
    ] == [True]


def test_a_new_admin_password_for_an_existing_install_is_refused(real_stack):
    with pytest.raises(SecretsError) as refused:
        sec.resolve(
            settings.load(
                env_dir=Path("/nonexistent"), environ={**real_stack.environ, "WEBUI_ADMIN_PASSWORD": "a-new-password-1"}
            ),
            stack.read_secret_from(real_stack.kube),
        )
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("WEBUI_ADMIN_PASSWORD: differs from the admin password of the existing Open WebUI")
    assert "a-new-password-1" not in message
    assert ADMIN_PASSWORD not in message
    # Why: the real Open WebUI keeps the admin it created at first start, whatever the env says.
    email = real_stack.plan.settings["WEBUI_ADMIN_EMAIL"]
    assert _signin(real_stack, email, ADMIN_PASSWORD)[0] == 200
    assert _signin(real_stack, email, "a-new-password-1")[0] == 400


def test_nothing_is_lost_across_deploy_destroy_deploy(real_stack):
    token = _admin_token(real_stack)
    ip = real_stack.webui().ip
    user = {"name": "Ada", "email": "ada@components.test", "password": "ada's password 1", "role": "user"}
    status, created = webui_api(ip, "POST", "/api/v1/auths/add", token=token, body=user)
    assert status == 200, created
    status, signed_in = _signin(real_stack, user["email"], user["password"])
    assert status == 200, signed_in
    chat = {"chat": {"title": "kept across destroy", "messages": [], "models": ["mistral:7b"]}}
    status, made = webui_api(ip, "POST", "/api/v1/chats/new", token=signed_in["token"], body=chat)
    assert status == 200, made

    real_stack.destroy()
    for name in ("postgres", "redis", "open-webui"):
        assert not real_stack.components[name].process.running
    real_stack.deploy()

    status, again = _signin(real_stack, user["email"], user["password"])
    assert status == 200, again
    status, chats = webui_api(real_stack.webui().ip, "GET", "/api/v1/chats/", token=again["token"])
    assert status == 200, chats
    assert [c["title"] for c in chats] == ["kept across destroy"]
    assert [c["id"] for c in chats] == [made["id"]]
