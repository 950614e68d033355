"""Backup and restore (k3stack/backup.py, k3stack/restore.py) without a cluster: the archive format,
encryption, manifest verification, the refusal and resume logic, the upgrade guard. The pods are a
fake Runner that runs the real `tar`/`sh` on local directories standing for the containers'."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from k3stack import backup as bk
from k3stack import restore as rs
from k3stack import settings as st
from k3stack.console import Console

PASSPHRASE = "correct horse battery staple"
SECRET_VALUES = {
    "POSTGRES_PASSWORD": "pg-Secret-Value-0123456789",
    "REDIS_PASSWORD": "redis-Secret-Value-0123456789",
    "WEBUI_SECRET_KEY": "webui-Session-Key-0123456789",
    "WEBUI_ADMIN_PASSWORD": "admin-Password-0123456789",
    "NETDATA_PASSWORD": "netdata-Password-0123456789",
}


def load_settings(**extra: str) -> st.Settings:
    environ = {"DOMAIN": "example.com", "ACME_EMAIL": "ops@example.com", "STACK_NAMESPACE": "llm", **extra}
    return st.load(env_dir=Path("/nonexistent"), environ=environ)


class FakeKube:
    """The API calls backup/restore make, on a dict of objects; records every write in order."""

    server = "https://fake:6443"

    def __init__(self, objects: list[dict]):
        self.objects = {self._key(o): o for o in objects}
        self.writes: list[tuple[str, str]] = []

    @staticmethod
    def _key(obj: dict) -> tuple[str, str, str]:
        return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    def get(self, api_version, kind, name, namespace=None):
        return self.objects.get((kind, namespace or "", name))

    def list(self, api_version, kind, namespace=None, *, label_selector="", field_selector=""):
        key, _, value = label_selector.partition("=")
        return [
            o
            for (k, ns, _), o in self.objects.items()
            if k == kind and ns == namespace and o["metadata"].get("labels", {}).get(key) == value
        ]

    def apply(self, obj, *, field_manager, force=False, dry_run=False):
        self.writes.append(("apply", f"{obj['kind']}/{obj['metadata']['name']}"))
        self.objects[self._key(obj)] = obj
        return obj

    def request(self, method, path, *, body=None, content_type="", **_):
        self.writes.append((method, path.rsplit("/", 1)[-1]))
        return {}

    def proxy(self, method, namespace, service, port, path, **_):
        from k3stack.kube import KubeError

        raise KubeError(f"cannot reach {service}:{port} in {namespace}")

    def delete(self, api_version, kind, name, namespace=None, **_):
        self.writes.append(("delete", f"{kind}/{name}"))
        return self.objects.pop((kind, namespace or "", name), None) is not None


def pod(name: str, app: str, image: str, env: dict[str, str] | None = None) -> dict:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "llm", "labels": {"app.kubernetes.io/name": app}},
        "spec": {
            "containers": [
                {"name": app, "image": image, "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
            ]
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def cluster(settings: st.Settings) -> FakeKube:
    from k3stack.secrets import resolve

    given = load_settings(**SECRET_VALUES)
    secrets = resolve(given, lambda ns, name: None).objects
    objects = [o.obj for o in secrets]
    objects += [
        pod("postgres-1", "postgres", "postgres:17.6", {"POSTGRES_USER": "openwebui", "POSTGRES_DB": "openwebui"}),
        pod("webui-1", "open-webui", "ghcr.io/open-webui/open-webui:v0.11.0"),
    ]
    for name in ("open-webui", "redis"):
        objects.append({"kind": "Deployment", "metadata": {"name": name, "namespace": "llm"}})
    return FakeKube(objects)


class FakePods:
    """The postgres and open-webui containers: pg_* answer from a dict 'database', tar and sh run
    for real with /app/backend/data mapped to a local directory."""

    def __init__(self, data_dir: Path, dump: bytes = b"PGDMP fake custom-format dump"):
        self.data_dir = data_dir
        self.dump = dump
        self.counts = "1 0"  # users, chats
        self.calls: list[str] = []
        self.restored: list[bytes] = []
        self.sql: list[bytes] = []
        self.fail_on: str | None = None
        self.events: list | None = None  # shared with FakeKube.writes: one order of everything

    def run(self, namespace, pod, container, argv, *, stdout=None, stdin=None, stdin_size=0, ok=(0,)):
        body = stdin.read(stdin_size) if stdin is not None else b""
        command = argv[4] if argv[:2] == ["sh", "-c"] and argv[2].startswith("head") else argv[0]
        command = "unpack" if command == "sh" else command
        self.calls.append(command)
        if self.events is not None and "--version" not in argv:
            self.events.append(("exec", command))
        if self.fail_on and self.fail_on == self.calls[-1]:
            raise KeyboardInterrupt
        out = b""
        if command == "pg_dump":
            out = b"pg_dump (PostgreSQL) 17.6" if "--version" in argv else self.dump
        elif command == "pg_restore":
            out = b"pg_restore (PostgreSQL) 17.6" if "--version" in argv else b""
            if "--version" not in argv:
                assert argv[-6:] == ["-h", bk.PG_SOCKET, "-U", "openwebui", "-d", "openwebui"]
                assert {"--clean", "--if-exists", "--single-transaction", "--exit-on-error"} <= set(argv)
                self.restored.append(body)
        elif command == "psql":
            self.sql.append(body)
            out = self.counts.encode() if b"to_regclass" in body else b""
        elif command == "tar":
            mapped = [str(self.data_dir) if a == bk.WEBUI_DATA else a for a in argv]
            out = subprocess.run(mapped, check=True, capture_output=True).stdout
        elif command == "unpack":
            mapped = [str(self.data_dir) if a == bk.WEBUI_DATA else a for a in argv]
            subprocess.run(mapped, input=body, check=True)
        if stdout is not None:
            stdout.write(out)
            return b""
        return out


@pytest.fixture
def stack(tmp_path):
    data = tmp_path / "webui-data"
    (data / "uploads").mkdir(parents=True)
    (data / "uploads" / "notes.txt").write_text("an uploaded file")
    (data / "vector_db").mkdir()
    (data / "vector_db" / "chroma.sqlite3").write_bytes(b"\x00vector")
    (data / "cache").mkdir()
    (data / "cache" / "big.bin").write_bytes(b"cached" * 100)
    settings = load_settings(**SECRET_VALUES)  # as with secrets in env/NAME.env: never in the archive
    out = tmp_path / "out"
    out.mkdir()
    return settings, cluster(settings), FakePods(data), out


def console() -> Console:
    return Console(stream=io.StringIO(), interactive=False)


def make_backup(stack, **kw) -> bk.BackupResult:
    settings, kube, pods, out = stack
    return bk.backup(
        kube, settings, console(), passphrase=PASSPHRASE, to=out, runner=pods, models=lambda: ["llama3.1:8b"], **kw
    )


# -- encryption ----------------------------------------------------------------------------------
def test_encryption_round_trip_and_wrong_passphrase():
    token, kdf = bk.encrypt(b"the secrets", PASSPHRASE)
    assert b"the secrets" not in token
    assert kdf["kdf"] == "scrypt"
    assert kdf["n"] >= 2**14
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert bk.decrypt(token, PASSPHRASE, kdf) == b"the secrets"
    with pytest.raises(bk.BackupError) as caught:
        bk.decrypt(token, PASSPHRASE + "x", kdf, "a.tar")
    assert "a.tar" in str(caught.value)
    assert "wrong passphrase" in str(caught.value)
    assert "K3STACK_BACKUP_PASSPHRASE" in caught.value.hint
    assert "\n" not in str(caught.value)


def test_two_encryptions_differ_in_salt():
    (a, kdf_a), (b, kdf_b) = bk.encrypt(b"x", PASSPHRASE), bk.encrypt(b"x", PASSPHRASE)
    assert kdf_a["salt"] != kdf_b["salt"]
    assert a != b


def test_passphrase_comes_from_the_environment_only():
    with pytest.raises(bk.BackupError, match="K3STACK_BACKUP_PASSPHRASE is not set"):
        bk.passphrase_from_env({})
    with pytest.raises(bk.BackupError, match="too short"):
        bk.passphrase_from_env({"K3STACK_BACKUP_PASSPHRASE": "short"})
    assert bk.passphrase_from_env({"K3STACK_BACKUP_PASSPHRASE": PASSPHRASE}) == PASSPHRASE


# -- the archive -------------------------------------------------------------------------------
def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_backup_writes_one_private_archive_with_every_part(stack):
    result = make_backup(stack)
    out = stack[3]
    assert list(out.iterdir()) == [result.path]  # nothing else left behind
    assert result.path.name.startswith("k3stack-llm-")
    assert result.path.suffix == ".tar"
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    parts = members(result.path)
    assert sorted(parts) == sorted([bk.MANIFEST, *bk.PARTS])
    manifest = json.loads(parts[bk.MANIFEST])
    assert manifest["format"] == bk.FORMAT
    assert manifest["images"] == {"postgres": "postgres:17.6", "open-webui": "ghcr.io/open-webui/open-webui:v0.11.0"}
    assert manifest["database"]["major"] == 17
    assert manifest["database"]["name"] == "openwebui"
    for name in bk.PARTS:
        import hashlib

        assert manifest["parts"][name] == {"size": len(parts[name]), "sha256": hashlib.sha256(parts[name]).hexdigest()}
    assert parts[bk.DUMP] == stack[2].dump
    assert json.loads(parts[bk.MODELS]) == {"models": ["llama3.1:8b"]}
    with tarfile.open(fileobj=io.BytesIO(parts[bk.VOLUME])) as volume:
        names = volume.getnames()
    assert "./uploads/notes.txt" in names
    assert "./vector_db/chroma.sqlite3" in names
    assert not any(n.startswith("./cache") for n in names)
    assert bk.verify(result.path)["parts"] == manifest["parts"]


def test_no_secret_in_clear_text_anywhere_in_the_archive(stack):
    path = make_backup(stack).path
    raw = path.read_bytes()
    parts = members(path)
    plain = [raw, *parts.values(), gzip.decompress(parts[bk.VOLUME])]
    for value in SECRET_VALUES.values():
        for form in (value.encode(), base64.b64encode(value.encode())):
            assert all(form not in blob for blob in plain), value
    settings = json.loads(parts[bk.SETTINGS])["values"]
    assert not set(settings) & st.SECRET_NAMES


def test_backup_without_a_passphrase_fails_before_writing(stack, monkeypatch):
    monkeypatch.delenv(bk.PASSPHRASE_ENV, raising=False)
    with pytest.raises(bk.BackupError):
        bk.passphrase_from_env()
    assert list(stack[3].iterdir()) == []


@pytest.mark.parametrize("step", ["pg_dump", "tar"])
def test_an_interrupted_backup_leaves_no_partial_archive(stack, step):
    stack[2].fail_on = step
    stack[2].calls.clear()
    with pytest.raises(KeyboardInterrupt):
        make_backup(stack)
    assert list(stack[3].iterdir()) == []


def test_interrupted_while_writing_the_archive_leaves_nothing(stack, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bk, "_fsync_dir", broken)  # after the rename: the archive is complete
    with pytest.raises(KeyboardInterrupt):
        make_backup(stack)
    assert [p.name for p in stack[3].iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(bk.os, "fsync", broken)  # before the rename: nothing at the target
    target = stack[3] / "b.tar"
    with pytest.raises(KeyboardInterrupt):
        bk.write_archive(target, {}, {"format": 1})
    assert not target.exists()
    assert not [p for p in stack[3].iterdir() if p.name.startswith(".b.tar")]


def test_a_failed_command_names_the_pod_and_leaves_nothing(stack):
    class Failing(FakePods):
        def run(self, namespace, pod, container, argv, **kw):
            if argv[0] == "tar":
                raise bk.ExecError(f"pod {namespace}/{pod} (container {container}): `tar` failed (exit 2): boom")
            return super().run(namespace, pod, container, argv, **kw)

    settings, kube, pods, out = stack
    with pytest.raises(bk.ExecError, match="webui-1"):
        bk.backup(kube, settings, console(), passphrase=PASSPHRASE, to=out, runner=Failing(pods.data_dir))
    assert list(out.iterdir()) == []


def test_a_missing_pod_is_one_line_with_the_fix(stack):
    _settings, kube, _pods, _out = stack
    kube.objects.pop(("Pod", "llm", "postgres-1"))
    with pytest.raises(bk.BackupError) as caught:
        make_backup(stack)
    assert str(caught.value) == (
        "no running postgres pod in namespace llm — fix: deploy the stack first (`inv deploy`; `inv status` shows "
        "what is not ready)"
    )


def test_verify_names_an_altered_part(stack, tmp_path):
    path = make_backup(stack).path
    parts = members(path)
    manifest = json.loads(parts[bk.MANIFEST])
    altered = tmp_path / "altered.tar"
    with tarfile.open(altered, "w") as tar:
        for name, data in parts.items():
            if name == bk.DUMP:
                data = data[:-1] + b"X"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(bk.BackupError, match=r"part postgres\.dump does not match its sha256"):
        bk.verify(altered)
    missing = tmp_path / "missing.tar"
    with tarfile.open(missing, "w") as tar:
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo(bk.MANIFEST)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(bk.BackupError, match=r"part postgres\.dump is missing"):
        bk.verify(missing)
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(bk.BackupError, match="not a k3stack backup archive"):
        bk.verify(tmp_path / "junk.tar")
    with pytest.raises(bk.BackupError, match="no such file"):
        bk.verify(tmp_path / "absent.tar")


def test_exit_status_from_the_status_channel():
    assert bk.exit_status(b'{"metadata":{},"status":"Success"}') == (0, "exit 0")
    failure = {
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "2"}]},
    }
    assert bk.exit_status(json.dumps(failure).encode()) == (2, "exit 2")
    assert bk.exit_status(b"")[0] == -1
    assert bk.exit_status(b'{"status":"Failure","message":"container not found"}') == (-1, "container not found")


def test_feed_reads_exactly_the_given_bytes():
    argv = [*bk.feed(5), "cat"]
    done = subprocess.run(argv, input=b"12345-never-read", capture_output=True, check=True)
    assert done.stdout == b"12345"


# -- the upgrade guard -------------------------------------------------------------------------------
def deployment(name: str, image: str, namespace: str = "llm") -> dict:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}},
    }


def test_needs_backup_on_a_stateful_image_change_only():
    live = [
        deployment("postgres", "postgres:17.5"),
        deployment("open-webui", "ow:v0.10.0"),
        deployment("ollama", "o:1"),
    ]
    assert bk.needs_backup([], live) == []  # a first install
    assert bk.needs_backup(live, live) == []
    changed = [
        deployment("postgres", "postgres:17.6"),
        deployment("open-webui", "ow:v0.11.0"),
        deployment("ollama", "o:2"),
    ]
    reasons = bk.needs_backup(live, changed)
    assert len(reasons) == 2
    assert reasons[0].startswith("deployment/open-webui (llm): image ow:v0.10.0 → ow:v0.11.0")
    assert reasons[1] == "deployment/postgres (llm): image postgres:17.5 → postgres:17.6"
    assert bk.needs_backup(live, [deployment("ollama", "o:3")]) == []


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("postgres:16.4", "postgres:17.6"),
        ("postgres:17.6", "postgres:16.4"),
        ("postgres:17.6", "postgres@sha256:" + "a" * 64),
    ],
)
def test_a_postgres_major_change_is_refused_with_the_procedure(before, after):
    with pytest.raises(bk.UpgradeRefusedError) as caught:
        bk.needs_backup([deployment("postgres", before)], [deployment("postgres", after)])
    message = str(caught.value)
    assert "deployment/postgres (llm)" in message
    assert "major version" in message
    assert "inv backup" in caught.value.hint
    assert "inv restore" in caught.value.hint
    assert f"POSTGRES_IMAGE={before}" in caught.value.hint


def test_image_major():
    assert bk.image_major("postgres:17.6") == 17
    assert bk.image_major("postgres:16-alpine") == 16
    assert bk.image_major("registry:5000/postgres:15.3@sha256:" + "b" * 64) == 15
    assert bk.image_major("registry:5000/postgres") is None
    assert bk.image_major("postgres:latest") is None
    assert bk.pg_major_of("pg_dump (PostgreSQL) 17.6 (Debian 17.6-1.pgdg120+1)") == 17
    assert bk.pg_major_of("pg_restore (PostgreSQL) 15.8") == 15


# -- restore ---------------------------------------------------------------------------------------
def test_refusal_counts_what_a_first_start_does_not_create():
    assert rs.refusal(0, 0, "db", "llm") is None
    assert rs.refusal(1, 0, "db", "llm") is None
    for users, chats in ((2, 0), (1, 1)):
        error = rs.refusal(users, chats, "openwebui", "llm")
        assert error is not None
        assert str(error).startswith(f"database openwebui in namespace llm already holds data ({users} users")
        assert "--force" in error.hint
        assert "\n" not in str(error)


def restore(stack, path, **kw) -> rs.RestoreResult:
    settings, kube, pods, _ = stack
    kw.setdefault("passphrase", PASSPHRASE)
    return rs.restore(kube, settings, path, console(), runner=pods, wait=lambda names: None, models=lambda: [], **kw)


def wipe_cluster_secrets(kube: FakeKube) -> None:
    for key in [k for k in kube.objects if k[0] == "Secret"]:
        del kube.objects[key]


def test_restore_in_order_secrets_database_volume_roll(stack):
    path = make_backup(stack).path
    _settings, kube, pods, _ = stack
    wipe_cluster_secrets(kube)
    for child in pods.data_dir.iterdir():
        subprocess.run(["rm", "-rf", str(child)], check=True)
    (pods.data_dir / "written-by-a-fresh-start").write_text("x")
    pods.calls.clear()
    kube.writes.clear()
    pods.events = kube.writes
    result = restore(stack, path)
    assert result.steps == ["secrets", "database", "volume", "rolled"]
    order = [
        w[0] if w[0] in ("PATCH", "delete") else w[1].split("/")[0] if w[0] == "apply" else w[1] for w in kube.writes
    ]
    secrets = order.count("Secret")
    assert secrets >= 4  # every Secret k3stack keeps
    assert order == [
        "psql",  # counts users and chats (nothing changed yet)
        "ConfigMap",  # the marker: a re-run resumes
        *["Secret"] * secrets,  # first, so the passwords match the data
        "psql",  # the role's password, the other sessions ended
        "pg_restore",
        "unpack",
        "PATCH",
        "PATCH",
        "delete",
    ]
    assert result.models_missing == ["llama3.1:8b"]
    assert kube.writes[-3:] == [("PATCH", "open-webui"), ("PATCH", "redis"), ("delete", f"ConfigMap/{rs.MARKER}")]
    assert pods.restored == [pods.dump]
    # The Secrets hold the archive's values again; the role gets a verifier, not the password.
    from k3stack.secrets import decode

    assert (
        decode(kube.get("v1", "Secret", "postgres", "llm"))["POSTGRES_PASSWORD"] == SECRET_VALUES["POSTGRES_PASSWORD"]
    )
    assert (
        decode(kube.get("v1", "Secret", "open-webui", "llm"))["WEBUI_SECRET_KEY"] == SECRET_VALUES["WEBUI_SECRET_KEY"]
    )
    alter = next(s for s in pods.sql if b"ALTER ROLE" in s)
    assert b"SCRAM-SHA-256$4096:" in alter
    assert SECRET_VALUES["POSTGRES_PASSWORD"].encode() not in alter
    assert (pods.data_dir / "uploads" / "notes.txt").read_text() == "an uploaded file"
    assert not (pods.data_dir / "written-by-a-fresh-start").exists()


def test_wrong_passphrase_changes_nothing(stack):
    path = make_backup(stack).path
    pods = stack[2]
    pods.calls.clear()
    with pytest.raises(bk.BackupError, match="wrong passphrase"):
        restore(stack, path, passphrase="not the passphrase at all")
    assert stack[1].writes == []
    assert pods.calls == []


def test_a_database_with_data_is_refused_unless_forced(stack):
    path = make_backup(stack).path
    _settings, kube, pods, _ = stack
    pods.counts = "3 7"
    with pytest.raises(rs.RestoreError, match=r"already holds data \(3 users, 7 chats\)"):
        restore(stack, path)
    assert kube.writes == []
    assert "pg_restore" in pods.calls
    assert pods.restored == []
    assert restore(stack, path, force=True).steps[-1] == "rolled"
    assert pods.restored == [pods.dump]


def test_an_interrupted_restore_run_again_converges(stack):
    path = make_backup(stack).path
    _settings, kube, pods, _ = stack
    pods.fail_on = "unpack"
    with pytest.raises(KeyboardInterrupt):
        restore(stack, path)
    assert kube.get("v1", "ConfigMap", rs.MARKER, "llm") is not None
    pods.fail_on = None
    pods.counts = "2 5"  # the database was restored already: it holds data now
    result = restore(stack, path)
    assert result.resumed
    assert result.steps[-1] == "rolled"
    assert kube.get("v1", "ConfigMap", rs.MARKER, "llm") is None
    # Another archive is not a resume: refused.
    other = make_backup(stack, now=__import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC)).path
    kube.apply(rs._marker("llm", bk.archive_id(path), path), field_manager="k3stack")
    with pytest.raises(rs.RestoreError, match="already holds data"):
        restore(stack, other)


def test_a_damaged_archive_changes_nothing(stack, tmp_path):
    path = make_backup(stack).path
    data = bytearray(path.read_bytes())
    at = data.find(stack[2].dump)
    data[at] ^= 1
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    with pytest.raises(bk.BackupError, match="does not match its sha256"):
        restore(stack, damaged)
    assert stack[1].writes == []


def test_an_older_postgres_than_the_dump_is_refused(stack):
    path = make_backup(stack).path

    class Older(FakePods):
        def run(self, namespace, pod, container, argv, **kw):
            if argv == ["pg_restore", "--version"]:
                return b"pg_restore (PostgreSQL) 16.4"
            return super().run(namespace, pod, container, argv, **kw)

    settings, kube, pods, _ = stack
    with pytest.raises(rs.RestoreError, match="dump is from PostgreSQL 17, the stack runs 16"):
        rs.restore(
            kube, settings, path, console(), passphrase=PASSPHRASE, runner=Older(pods.data_dir), wait=lambda n: None
        )
    assert kube.writes == []


def test_scram_verifier_shape_and_determinism():
    salt = os.urandom(16)
    verifier = rs.scram_verifier("pencil", salt)
    assert verifier == rs.scram_verifier("pencil", salt) != rs.scram_verifier("pencil")
    head, keys = verifier.split("$", 1)[1].split("$")
    assert head == f"4096:{base64.b64encode(salt).decode()}"
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert len(stored) == len(server) == 32


def test_scram_verifier_matches_the_rfc_7677_exchange():
    # RFC 7677 section 3: user "user", password "pencil", this salt, 4096 iterations; the
    # server's signature in the example is computed from ServerKey and the auth message.
    import hashlib
    import hmac

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    server_key = base64.b64decode(rs.scram_verifier("pencil", salt).rsplit(":", 1)[1])
    auth = (
        "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    signature = hmac.new(server_key, auth.encode(), hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_upgrade_decision():
    assert bk.upgrade_decision([], None, ci=True) is False  # nothing stateful changes
    assert bk.upgrade_decision(["r"], None, ci=False) is True  # a person gets the backup by default
    assert bk.upgrade_decision(["r"], False, ci=False) is False
    assert bk.upgrade_decision(["r"], True, ci=True) is True
    assert bk.upgrade_decision(["r"], False, ci=True) is False
    with pytest.raises(bk.UpgradeRefusedError) as caught:
        bk.upgrade_decision(["deployment/open-webui (llm): image a → b"], None, ci=True)
    assert "image a → b" in str(caught.value)
    assert "--backup" in caught.value.hint
    assert "--skip-backup" in caught.value.hint


def test_rollback_hint_names_the_previous_image_and_the_archive():
    reasons = bk.needs_backup([deployment("open-webui", "ow:v0.10.0")], [deployment("open-webui", "ow:v0.11.0")])
    hint = bk.rollback_hint(reasons, Path("/b/k.tar"))
    assert hint == "roll back: set the image settings back to ow:v0.10.0, `inv deploy`, then `inv restore /b/k.tar`"


def test_guard_takes_a_backup_before_an_open_webui_image_change(stack):
    settings, kube, pods, out = stack
    live = [deployment("open-webui", "ghcr.io/open-webui/open-webui:v0.10.0")]
    rendered = [deployment("open-webui", "ghcr.io/open-webui/open-webui:v0.11.0")]
    environ = {bk.PASSPHRASE_ENV: PASSPHRASE}
    reasons, taken = bk.guard_upgrade(
        kube, settings, live, rendered, console(), choice=None, ci=False, to=out, runner=pods, environ=environ
    )
    assert len(reasons) == 1
    assert taken is not None
    assert list(out.iterdir()) == [taken.path]
    assert taken.warnings[0].startswith("the model list is not in the archive (Ollama did not answer: Ollama (")
    assert json.loads(bk.read_part(taken.path, bk.MODELS)) == {"models": None}
    reasons, taken = bk.guard_upgrade(kube, settings, live, live, console(), choice=None, ci=True, to=out, runner=pods)
    assert (reasons, taken) == ([], None)
    with pytest.raises(bk.BackupError, match="K3STACK_BACKUP_PASSPHRASE is not set"):
        bk.guard_upgrade(
            kube, settings, live, rendered, console(), choice=True, ci=True, to=out, runner=pods, environ={}
        )
    assert len(list(out.iterdir())) == 1


def test_a_secret_the_archive_lacks_is_kept_as_the_cluster_has_it():
    settings = load_settings()
    saved = {"STACK_NAMESPACE/postgres": {"POSTGRES_PASSWORD": base64.b64encode(b"from-the-archive-123").decode()}}
    asked = []

    def read_cluster(namespace, name):
        asked.append((namespace, name))
        return {"password": "netdata-from-the-cluster"} if name == "netdata-basic-auth" else None

    resolved, objects = rs.stack_secrets(settings, saved, read_cluster)
    assert resolved.values["POSTGRES_PASSWORD"] == "from-the-archive-123"
    assert resolved.values["NETDATA_PASSWORD"] == "netdata-from-the-cluster"
    assert ("llm", "postgres") not in asked  # the archive's wins, the cluster is not asked
    assert all(m.obj["metadata"]["labels"]["k3stack.dev/instance"] == "llm" for m in objects)


def test_scram_stored_key_verifies_the_rfc_7677_client_proof():
    import hashlib
    import hmac

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key = base64.b64decode(rs.scram_verifier("pencil", salt).rsplit("$", 1)[1].split(":")[0])
    auth = (
        "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = hmac.new(stored_key, auth.encode(), hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key  # what the server checks at sign-in


class FakeWS:
    """The official client's WSClient as it behaves (kubernetes.stream.ws_client): update() buffers
    frames per channel in `_channels` (and stdout/stderr in `_all`); read_channel() on an empty
    channel reads MORE frames first; read_all() empties `_all` and drops every channel buffer. A
    runner using those two would lose stdout between them — the flaky 256 KB echo on the bed."""

    def __init__(self, frames: list[tuple[int, bytes]]):
        self.frames, self._channels, self._all = list(frames), {}, io.BytesIO()
        self.stdin, self.open = bytearray(), True

    def is_open(self):
        return self.open

    def update(self, timeout=0):
        if self.frames:
            channel, data = self.frames.pop(0)
            self._channels[channel] = self._channels.get(channel, b"") + data
            if channel in (1, 2):
                self._all.write(data)
        else:
            self.open = False

    def read_channel(self, channel, timeout=0):
        if channel not in self._channels:
            self.update(timeout)
        return self._channels.pop(channel, b"")

    def read_all(self):
        out, self._all, self._channels = self._all.getvalue(), io.BytesIO(), {}
        return out

    def write_stdin(self, data):
        self.stdin += data

    def close_channel(self, channel):
        pass

    def close(self):
        self.open = False


def pod_exec(monkeypatch, frames) -> tuple[bk.PodExec, dict]:
    import kubernetes.stream
    from kubernetes import client

    seen = {}

    def stream(method, pod, namespace, **kwargs):
        seen.update(kwargs, pod=pod, namespace=namespace, ws=FakeWS(frames))
        return seen["ws"]

    monkeypatch.setattr(kubernetes.stream, "stream", stream)
    kube = type("K", (), {"api": client.ApiClient(client.Configuration()), "server": "https://fake:6443"})()
    return bk.PodExec(kube), seen


FAILURE = {
    "status": "Failure",
    "reason": "NonZeroExitCode",
    "details": {"causes": [{"reason": "ExitCode", "message": "1"}]},
}


def test_pod_exec_streams_stdout_and_judges_the_status(monkeypatch):
    success = json.dumps({"metadata": {}, "status": "Success"}).encode()
    runner, seen = pod_exec(monkeypatch, [(1, b"hello "), (2, b"a warning\n"), (1, b"world"), (3, success)])
    sink = io.BytesIO()
    assert runner.run("llm", "p", "c", ["echo"], stdout=sink) == b""
    assert sink.getvalue() == b"hello world"
    assert seen["command"] == ["echo"]
    assert seen["container"] == "c"
    assert seen["binary"] is True
    assert seen["stdin"] is False
    runner, seen = pod_exec(monkeypatch, [(2, b"tar: file changed as we read it\n"), (3, json.dumps(FAILURE).encode())])
    assert runner.run("llm", "p", "c", ["tar"], ok=(0, 1)) == b""  # exit 1 accepted when asked
    runner, seen = pod_exec(monkeypatch, [(2, b"first\nlast line\n"), (3, json.dumps(FAILURE).encode())])
    with pytest.raises(bk.ExecError) as caught:
        runner.run("llm", "p", "c", ["tar", "-c"])
    assert str(caught.value).startswith("pod llm/p (container c): `tar -c` failed (exit 1): last line")
    runner, seen = pod_exec(monkeypatch, [(1, b"partial")])  # the connection ends, no status
    with pytest.raises(bk.ExecError, match="closed without an exit status"):
        runner.run("llm", "p", "c", ["pg_dump"])


def test_pod_exec_sends_exactly_stdin_size_bytes(monkeypatch):
    success = json.dumps({"metadata": {}, "status": "Success"}).encode()
    runner, seen = pod_exec(monkeypatch, [(3, success)])
    data = b"x" * (bk.CHUNK * 2 + 5)
    runner.run(
        "llm", "p", "c", [*bk.feed(len(data)), "cat"], stdin=io.BytesIO(data + b"never sent"), stdin_size=len(data)
    )
    assert bytes(seen["ws"].stdin) == data
    assert seen["stdin"] is True
    runner, seen = pod_exec(monkeypatch, [(3, success)])
    with pytest.raises(bk.ExecError, match="stdin ended after 3 of 10 bytes"):
        runner.run("llm", "p", "c", ["cat"], stdin=io.BytesIO(b"abc"), stdin_size=10)
