"""Backup and restore against the real stack in the bed (issue 17's "done when"): real PostgreSQL and
Open WebUI behind the pods, reached only through the API server — pods/exec over WebSocket, served
by the bed's kubelet (tests/testbed/kubelet.py) with the kubelet's own protocol, so the official
client's stream() runs unmodified."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
import time

import pytest

from k3stack import backup as bk
from k3stack import deploy as stack
from k3stack import restore as rs
from k3stack.console import Console
from tests.testbed.kubelet import V4, V5
from tests.testbed.real.components import wait_for, webui_api
from tests.testbed.real.exec import exec_enabled
from tests.testbed.real.plugin import ADMIN_PASSWORD

PASSPHRASE = "a backup passphrase for the bed"
USER = {"name": "Ada", "email": "ada@smoke.test", "password": "Ada's p@ss word: 'quoted' & long", "role": "user"}


@pytest.fixture
def kubelet(real_stack):
    real_stack.forget_signins()
    with exec_enabled(real_stack) as served:
        yield served


def pod_name(real_stack, app: str) -> str:
    return bk.running_pod(real_stack.kube, real_stack.namespace, app, app).name


@pytest.mark.parametrize("protocol", [V4, V5])
def test_exec_through_the_api_server_speaks_the_kubelets_protocol(real_stack, protocol):
    with exec_enabled(real_stack, protocols=(protocol,)) as kubelet:
        runner = bk.PodExec(real_stack.kube)
        ns, pod = real_stack.namespace, pod_name(real_stack, "postgres")
        assert runner.run(ns, pod, "postgres", ["pg_dump", "--version"]).startswith(b"pg_dump (PostgreSQL) 15.")
        assert kubelet.requests[-1]["protocol"] == protocol
        assert kubelet.requests[-1]["path"] == f"/exec/{ns}/{pod}/postgres"
        data = bytes(range(256)) * 1000  # binary, more than one frame, through stdin and back
        echoed = runner.run(
            ns, pod, "postgres", [*bk.feed(len(data)), "cat"], stdin=io.BytesIO(data), stdin_size=len(data)
        )
        assert echoed == data
        with pytest.raises(bk.ExecError, match=r"failed \(exit 3\): to stderr"):
            runner.run(ns, pod, "postgres", ["sh", "-c", "echo to stderr >&2; exit 3"])
        with pytest.raises(bk.ExecError, match="container nope is not valid"):
            runner.run(ns, pod, "nope", ["true"])


def _signin(ip: str, email: str, password: str) -> str | None:
    status, data = webui_api(ip, "POST", "/api/v1/auths/signin", body={"email": email, "password": password})
    return data["token"] if status == 200 else None


def _chats(ip: str, token: str) -> list[str]:
    status, data = webui_api(ip, "GET", "/api/v1/chats/list", token=token)
    assert status == 200, data
    return [c["title"] for c in data]


class Interrupt:
    """A file that raises KeyboardInterrupt (Ctrl-C) once `after` bytes went through it."""

    def __init__(self, inner, after: int):
        self.inner, self.left = inner, after

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise KeyboardInterrupt
        data = self.inner.read(min(n, self.left) if n >= 0 else self.left)
        self.left -= len(data)
        return data

    def write(self, data: bytes) -> int:
        if len(data) >= self.left:
            self.inner.write(data[: self.left])
            raise KeyboardInterrupt
        self.left -= len(data)
        return self.inner.write(data)


class InterruptingExec(bk.PodExec):
    """PodExec whose stream for commands starting with `word` is cut halfway (a Ctrl-C mid-transfer)."""

    def __init__(self, kube, word: str, after: int):
        super().__init__(kube)
        self.word, self.after = word, after

    def run(self, namespace, pod, container, argv, *, stdout=None, stdin=None, **kw):
        if any(self.word in arg for arg in argv):
            stdout = Interrupt(stdout, self.after) if stdout is not None else None
            stdin = Interrupt(stdin, self.after) if stdin is not None else None
        return super().run(namespace, pod, container, argv, stdout=stdout, stdin=stdin, **kw)


def test_backup_destroy_purge_deploy_restore_keeps_the_user_and_the_chat(real_stack, kubelet, tmp_path):
    kube, ns, webui = real_stack.kube, real_stack.namespace, real_stack.webui()
    printed = io.StringIO()
    console = Console(stream=printed, interactive=False)
    admin = _signin(webui.ip, real_stack.plan.settings["WEBUI_ADMIN_EMAIL"], ADMIN_PASSWORD)
    assert admin
    status, data = webui_api(webui.ip, "POST", "/api/v1/auths/add", token=admin, body=USER)
    assert status == 200, data
    token = _signin(webui.ip, USER["email"], USER["password"])
    assert token
    chat = {"title": "Backup test chat", "messages": [{"role": "user", "content": "remember this"}], "models": []}
    status, data = webui_api(webui.ip, "POST", "/api/v1/chats/new", token=token, body={"chat": chat})
    assert status == 200, data
    assert "Backup test chat" in _chats(webui.ip, token)
    volume = bk.running_pod(kube, ns, "open-webui", "open-webui")
    runner = bk.PodExec(kube)
    runner.run(
        ns,
        volume.name,
        "open-webui",
        ["sh", "-c", 'mkdir -p "$0/uploads" && echo kept > "$0/uploads/a.txt"', bk.WEBUI_DATA],
    )

    # An interrupted backup leaves nothing; then a whole one.
    out = tmp_path / "backups"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        bk.backup(
            kube,
            real_stack.plan.settings,
            console,
            passphrase=PASSPHRASE,
            to=out,
            runner=InterruptingExec(kube, "tar", 100),
        )
    assert list(out.iterdir()) == []
    begun = time.monotonic()
    result = bk.backup(kube, real_stack.plan.settings, console, passphrase=PASSPHRASE, to=out)
    backup_seconds = time.monotonic() - begun
    assert list(out.iterdir()) == [result.path]
    assert oct(result.path.stat().st_mode & 0o777) == "0o600"
    assert result.manifest["database"]["major"] == 15  # the bed's PostgreSQL
    assert sorted(json.loads(bk.read_part(result.path, bk.MODELS))["models"]) == sorted(real_stack.plan.settings.models)

    # No secret in clear text: the archive's bytes, each part, the unpacked volume.
    secrets = {k: v for k, v in real_stack.plan.secrets.values.items() if len(v) >= 8}
    raw = result.path.read_bytes()
    with tarfile.open(result.path) as tar:
        parts = [tar.extractfile(m).read() for m in tar.getmembers()]
    blobs = [raw, *parts, gzip.decompress(bk.read_part(result.path, bk.VOLUME))]
    for name, value in secrets.items():
        for form in (value.encode(), base64.b64encode(value.encode())):
            assert all(form not in blob for blob in blobs), f"{name} in clear text in the archive"
    old_postgres_password = real_stack.plan.secrets.values["POSTGRES_PASSWORD"]

    # Everything gone, a fresh stack (new generated passwords, empty volumes), then the restore.
    stack.destroy(kube, real_stack.plan, console, purge=True)
    real_stack.sync()
    for namespace in (ns, real_stack.monitoring):
        assert wait_for(lambda namespace=namespace: kube.get("v1", "Namespace", namespace) is None, timeout=120)
    real_stack.deploy()
    fresh = real_stack.plan.secrets.values["POSTGRES_PASSWORD"]
    assert fresh != old_postgres_password
    assert _signin(webui.ip, USER["email"], USER["password"]) is None  # not on the fresh stack

    # An interrupted restore (cut in the middle of the volume) ...
    with pytest.raises(KeyboardInterrupt):
        rs.restore(
            kube,
            real_stack.plan.settings,
            result.path,
            console,
            passphrase=PASSPHRASE,
            runner=InterruptingExec(kube, "-xzf -", 1000),
        )
    assert kube.get("v1", "ConfigMap", rs.MARKER, ns) is not None
    # ... run again converges (the database now holds Ada's data: resumed, not refused).
    begun = time.monotonic()
    done = rs.restore(kube, real_stack.plan.settings, result.path, console, passphrase=PASSPHRASE)
    restore_seconds = time.monotonic() - begun
    assert done.resumed
    assert done.steps == ["secrets", "database", "volume", "rolled"]
    assert kube.get("v1", "ConfigMap", rs.MARKER, ns) is None
    real_stack.sync()  # the bed's kubelet restarts the rolled components
    real_stack.deploy()  # settings and cluster agree again (later tests use the plan)
    assert real_stack.plan.secrets.values["POSTGRES_PASSWORD"] == old_postgres_password

    real_stack.forget_signins()
    token = _signin(webui.ip, USER["email"], USER["password"])
    assert token, "the restored user cannot sign in with the same password"
    assert "Backup test chat" in _chats(webui.ip, token)
    assert _signin(webui.ip, real_stack.plan.settings["WEBUI_ADMIN_EMAIL"], ADMIN_PASSWORD)
    volume = bk.running_pod(kube, ns, "open-webui", "open-webui")
    assert runner.run(ns, volume.name, "open-webui", ["cat", f"{bk.WEBUI_DATA}/uploads/a.txt"]) == b"kept\n"
    output = printed.getvalue()
    assert all(value not in output for value in secrets.values())
    print(
        f"\narchive {result.size} bytes ({ {k: v['size'] for k, v in result.manifest['parts'].items()} }), "
        f"backup {backup_seconds:.1f}s, restore {restore_seconds:.1f}s"
    )

    # Restoring over a stack with data is refused, and nothing changes.
    with pytest.raises(rs.RestoreError, match="already holds data"):
        rs.restore(kube, real_stack.plan.settings, result.path, console, passphrase=PASSPHRASE)
    with pytest.raises(bk.BackupError, match="wrong passphrase"):
        rs.restore(kube, real_stack.plan.settings, result.path, console, passphrase="not the passphrase!")


def test_an_open_webui_image_change_takes_a_backup_before_anything_is_applied(real_stack, kubelet, tmp_path):
    """The guard deploy runs between listing the live objects and applying (the lead wires it)."""
    from pathlib import Path

    from k3stack import settings as st
    from k3stack.apply import Applier

    kube = real_stack.kube

    def plan_with(**changes: str) -> stack.Plan:
        loaded = st.load(env_dir=Path("/nonexistent"), environ={**real_stack.environ, **changes})
        return stack.make_plan(loaded, stack.read_secret_from(kube))

    unchanged = plan_with()
    live = list(Applier(kube, instance=unchanged.instance).current(unchanged.manifests).values())
    console = Console(stream=io.StringIO(), interactive=False)
    environ = {bk.PASSPHRASE_ENV: PASSPHRASE}
    same = bk.guard_upgrade(kube, unchanged.settings, live, [m.obj for m in unchanged.manifests], console,
                            choice=None, ci=True, to=tmp_path, environ=environ)  # fmt: skip
    assert same == ([], None)
    newer = plan_with(OPEN_WEBUI_IMAGE="ghcr.io/open-webui/open-webui:v0.11.1")
    reasons, taken = bk.guard_upgrade(kube, newer.settings, live, [m.obj for m in newer.manifests], console,
                                      choice=None, ci=False, to=tmp_path, environ=environ)  # fmt: skip
    assert reasons == [
        f"deployment/open-webui ({real_stack.namespace}): image ghcr.io/open-webui/open-webui:v0.11.0 → "
        "ghcr.io/open-webui/open-webui:v0.11.1 (its start migrates the database, with no way back)"
    ]
    assert taken is not None
    assert bk.verify(taken.path)["images"]["open-webui"] == "ghcr.io/open-webui/open-webui:v0.11.0"
    major = plan_with(POSTGRES_IMAGE="postgres:18.1")
    with pytest.raises(bk.UpgradeRefusedError, match=r"major version \(17 → 18\)"):
        bk.guard_upgrade(kube, major.settings, live, [m.obj for m in major.manifests], console,
                         choice=True, ci=False, to=tmp_path, environ=environ)  # fmt: skip
    assert kube.get("apps/v1", "Deployment", "open-webui", real_stack.namespace)["spec"]["template"]["spec"][
        "containers"
    ][0]["image"].endswith(":v0.11.0")
