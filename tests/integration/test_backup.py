"""Backup and restore against the real stack in the bed (issue 17's "done when"): real PostgreSQL and
Open WebUI behind the pods, reached only through the API server — pods/exec over WebSocket, served
by the bed's kubelet (tests/testbed/kubelet.py) with the kubelet's own protocol, so the official
client's stream() runs unmodified."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pwd
import shutil
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


# -- the scheduled backup's script, for real (issue 17: k8s/llm-stack/backup.yaml) ------------------
class CronBackup:
    """The CronJob's container as deploy renders it, run where the bed can run it: its command with
    /bin/sh in the PostgreSQL pod (the image's pg_dump, the pod's /etc/hosts: PGHOST=postgres is the
    Service's endpoint, over TCP with the password as the Job would), with exactly its environment
    (`env -i`, plus the image's PATH) and its volumes at directories of its own — /backups, /tmp,
    the postgres Secret's password file — as a kubelet would mount them."""

    def __init__(self, real_stack, root, keep: int):
        from pathlib import Path

        from k3stack import settings as st
        from tests.testbed.real.exec import IMAGE_PATH
        from tests.testbed.real.pods import hosts_file

        self.real_stack, self.runner = real_stack, bk.PodExec(real_stack.kube)
        loaded = st.load(env_dir=Path("/nonexistent"), environ={**real_stack.environ, "BACKUP_KEEP": str(keep)})
        plan = stack.make_plan(loaded, stack.read_secret_from(real_stack.kube))
        [cronjob] = [m.obj for m in plan.manifests if m.kind == "CronJob"]
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        [self.container] = pod["containers"]
        self.volumes = {v["name"]: v for v in pod["volumes"]}
        self.mounts = {m["mountPath"]: root / m["name"] for m in self.container["volumeMounts"]}
        owner = pwd.getpwnam(real_stack.components["postgres"].user)
        for local in [root, *self.mounts.values()]:
            local.mkdir(exist_ok=True)
            os.chown(local, owner.pw_uid, owner.pw_gid)
        self.backups, self.tmp = self.mounts["/backups"], self.mounts["/tmp"]
        self.password = self.mounts["/run/secrets/postgres"] / "POSTGRES_PASSWORD"
        self.write_password(real_stack.plan.secrets.values["POSTGRES_PASSWORD"])
        self.path = IMAGE_PATH["postgres"]()
        # Cluster DNS as it answers now: the pod's /etc/hosts was written when PostgreSQL started,
        # before its own Service had a ready endpoint (the bed writes a pod's hosts file once).
        component = real_stack.components["postgres"]
        hosts_file(real_stack.kube, [real_stack.namespace, real_stack.monitoring], component.workdir / "hosts")

    def write_password(self, value: str) -> None:
        self.password.write_text(value)
        os.chmod(self.password, 0o440)  # the Secret volume's defaultMode
        os.chown(self.password, self.backups.stat().st_uid, self.backups.stat().st_gid)

    def local(self, value: str) -> str:
        """A container path in the environment, at its directory here (what the bed's kubelet does)."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount + "/"):
                return str(self.mounts[mount]) + value[len(mount) :]
        return value

    def run(self) -> str:
        env = [f"{e['name']}={self.local(e['value'])}" for e in self.container["env"]]
        argv = ["env", "-i", f"PATH={self.path}", *env, *self.container["command"]]
        pod = pod_name(self.real_stack, "postgres")
        return self.runner.run(self.real_stack.namespace, pod, "postgres", argv).decode()

    def dumps(self) -> list[str]:
        return sorted(p.name for p in self.backups.iterdir() if p.name.endswith(".dump"))


def next_second() -> None:
    """Wait for the next UTC second: each run's dump gets a name of its own."""
    time.sleep(1.05 - time.time() % 1)


def test_the_scheduled_backup_script_dumps_keeps_the_newest_and_leaves_nothing_half_done(real_stack, kubelet):
    import re
    import subprocess
    import uuid

    from tests.testbed.real import PG_BIN

    keep = 3
    root = real_stack.components["postgres"].workdir / f"cron-{uuid.uuid4().hex[:6]}"
    cron = CronBackup(real_stack, root, keep)
    # What the container gets: the command is /bin/sh -c SCRIPT; no secret in its environment.
    assert cron.container["command"][:2] == ["/bin/sh", "-c"]
    assert all("valueFrom" not in e for e in cron.container["env"])
    assert cron.volumes["password"]["secret"]["secretName"] == "postgres"
    assert cron.volumes["backups"]["persistentVolumeClaim"]["claimName"] == "postgres-backups"
    # Files that are not the CronJob's: never touched, whatever their names.
    others = {"notes.txt": "mine", "openwebui-manual.dump": "mine too", "openwebui-20200101T000000Z.dump.bak": "x"}
    for name, text in others.items():
        (cron.backups / name).write_text(text)
    (cron.backups / "a-directory").mkdir()
    # An older dump of the CronJob's own (by its name, though its file is the newest): the first to go.
    (cron.backups / "openwebui-20200101T000000Z.dump").write_bytes(b"an old dump")

    written = []
    for run in range(keep + 2):
        next_second()
        output = cron.run()
        found = re.search(r"^wrote (\S+/(openwebui-\d{8}T\d{6}Z\.dump)) \(\s*(\d+) bytes\)$", output, re.M)
        assert found, output
        written.append(found.group(2))
        if run < keep - 1:
            assert "removed" not in output  # the old one and this run's: no more than kept
        if run == keep - 1:
            assert output.endswith(f"removed {cron.backups}/openwebui-20200101T000000Z.dump (keeping the newest 3)\n")
    assert len(set(written)) == keep + 2
    assert cron.dumps() == sorted([*written[-keep:], "openwebui-manual.dump"])
    assert {p.name for p in cron.backups.iterdir()} == {*written[-keep:], *others, "a-directory"}
    assert all((cron.backups / name).read_text() == text for name, text in others.items())
    assert oct((cron.tmp / "pgpass").stat().st_mode & 0o777) == "0o600"
    for name in written[-keep:]:
        path = cron.backups / name
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        listed = subprocess.run([str(PG_BIN / "pg_restore"), "--list", str(path)], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        tables = set(re.findall(r"TABLE public (\w+) ", listed.stdout))
        assert {"user", "auth", "chat", "config"} <= tables, sorted(tables)

    # The newest dump restores: into a database of its own, it holds the admin Open WebUI created.
    ns, pod = real_stack.namespace, pod_name(real_stack, "postgres")
    user = real_stack.plan.settings["POSTGRES_USER"]
    local = ["-h", bk.PG_SOCKET, "-U", user]
    cron.runner.run(ns, pod, "postgres", ["dropdb", *local, "--if-exists", "restore_check"])
    cron.runner.run(ns, pod, "postgres", ["createdb", *local, "restore_check"])
    try:
        # (fed on stdin: the exec maps argv paths under the pod's mounts, and the bed's /tmp is one)
        newest = cron.backups / written[-1]
        restore = [*bk.feed(newest.stat().st_size), "pg_restore", *local, "-d", "restore_check", "--exit-on-error"]
        with open(newest, "rb") as dump:
            cron.runner.run(ns, pod, "postgres", restore, stdin=dump, stdin_size=newest.stat().st_size)
        emails = cron.runner.run(
            ns, pod, "postgres", ["psql", *local, "-d", "restore_check", "-tAc", 'SELECT email FROM "user"']
        )
        assert real_stack.plan.settings["WEBUI_ADMIN_EMAIL"] in emails.decode().split()
    finally:
        cron.runner.run(ns, pod, "postgres", ["dropdb", *local, "--if-exists", "restore_check"])

    # README's in-place restore, its very command, from PostgreSQL's own /backups (the CronJob's volume,
    # read-only there): the live database comes back as dumped, Open WebUI's users and all.
    from tests.testbed.real.exec import volume_paths
    from tests.testbed.real.pods import container_of

    component = real_stack.components["postgres"]
    mounted = volume_paths(component, component.template, container_of(component.template, "postgres"))
    there = shutil.copy(cron.backups / written[-1], mounted.path(f"/backups/{written[-1]}"))
    os.chown(there, (cron.backups / written[-1]).stat().st_uid, (cron.backups / written[-1]).stat().st_gid)
    count = ["psql", *local, "-d", real_stack.plan.settings["POSTGRES_DB"], "-tAc", 'SELECT count(*) FROM "user"']
    users = cron.runner.run(ns, pod, "postgres", count)
    readme = ["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error"]
    readme += ["-h", "/var/run/postgresql", "-U", user, "-d", real_stack.plan.settings["POSTGRES_DB"]]
    cron.runner.run(ns, pod, "postgres", [*readme, f"/backups/{written[-1]}"])
    assert cron.runner.run(ns, pod, "postgres", count) == users

    # A dump that fails (the server refuses the password) exits non-zero and leaves no dump, no
    # .partial: the dumps already there stay as they were.
    before = {p.name: p.stat().st_mtime_ns for p in cron.backups.iterdir()}
    cron.write_password("not the password at all")
    next_second()
    # (libpq's last line after "password authentication failed": where the password came from)
    with pytest.raises(bk.ExecError, match=r"failed \(exit 1\): password retrieved from file \S+/tmp/pgpass"):
        cron.run()
    assert {p.name: p.stat().st_mtime_ns for p in cron.backups.iterdir()} == before
    assert not list(cron.backups.glob("*.partial"))
    # A .partial a killed run left behind (its EXIT trap never ran) goes with the next run.
    cron.write_password(real_stack.plan.secrets.values["POSTGRES_PASSWORD"])
    (cron.backups / "openwebui-20300101T000000Z.dump.partial").write_bytes(b"cut")
    next_second()
    cron.run()
    assert not list(cron.backups.glob("*.partial"))
    assert len([n for n in cron.dumps() if n != "openwebui-manual.dump"]) == keep
