"""`inv restore ARCHIVE` as a library: an archive of k3stack/backup.py back onto a deployed stack.

Order (each step is idempotent, so an interrupted restore run again converges):
 1. the archive is verified (sha256 of every part) and its Secrets decrypted — a damaged archive or
    a wrong passphrase stops here, nothing changed;
 2. a database that already holds data (chats, or users beyond the admin a first start creates)
    is refused unless `force` — except when a marker (ConfigMap k3stack-restore) says this very
    archive's restore was started and interrupted;
 3. the Secrets, first, so the passwords match the data: applied as deploy builds them (same
    labels, field manager k3stack), with the archive's values;
 4. PostgreSQL: the role's password set to the restored one (a SCRAM verifier, never the
    password itself, over exec stdin), then `pg_restore --clean --if-exists --single-transaction`
    (all or nothing);
 5. Open WebUI's data volume: emptied (cache aside) and unpacked;
 6. the pods that read the Secrets (Open WebUI, Redis) rolled (restart annotation, as
    `kubectl rollout restart`), waited for, the marker removed; missing models pulled again."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import backup as bk
from .console import Console, human_size
from .errors import K3stackError, command

MARKER = "k3stack-restore"  # ConfigMap in the stack's namespace while a restore is under way
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
ROLLED = ("open-webui", "redis")  # Deployments whose pods read the restored Secrets at start
# Users and chats: SQL that works before Open WebUI created its tables (then 0): query_to_xml
# runs the count only in the CASE branch where the table exists.
COUNT = (
    "CASE WHEN to_regclass('public.{t}') IS NULL THEN 0 ELSE "
    "(xpath('/row/c/text()', query_to_xml('SELECT count(*) AS c FROM public.{q}', false, true, '')))[1]::text::int END"
)
HAS_DATA_SQL = "SELECT " + COUNT.format(t="user", q='"user"') + ", " + COUNT.format(t="chat", q="chat")


class RestoreError(bk.BackupError):
    """A restore cannot go on: names the archive, database or pod, and the fix."""


def refusal(users: int, chats: int, database: str, namespace: str) -> RestoreError | None:
    """Why restoring over this database is refused (None: it holds nothing worth keeping). A first
    start of Open WebUI creates exactly one user (the admin from the settings) and no chat."""
    if chats == 0 and users <= 1:
        return None
    return RestoreError(
        f"database {database} in namespace {namespace} already holds data ({users} users, {chats} chats); "
        "restoring would replace it",
        f"restore onto a fresh stack ({command('destroy --purge --yes')}, {command('deploy')}), or pass --force "
        f"to replace it ({command('backup')} first keeps a copy)",
    )


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, as
    `ALTER ROLE ... PASSWORD` computes it): `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    Sent instead of the password, the password never reaches the server or its logs."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier in double quotes (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def password_sql(user: str, password: str) -> bytes:
    """SQL setting `user`'s password (as a verifier) and ending the database's other sessions
    (Open WebUI's, which must reconnect with the restored password after its roll)."""
    verifier = scram_verifier(password)
    return (
        f"ALTER ROLE {quote_ident(user)} PASSWORD '{verifier}';\n"
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid();\n"
    ).encode()


@dataclass
class RestoreResult:
    archive: Path
    seconds: float
    steps: list[str] = field(default_factory=list)
    models_missing: list[str] = field(default_factory=list)
    resumed: bool = False

    def to_json(self) -> dict:
        """For `inv restore --json`: archive, seconds, steps done, models to pull, resumed or not."""
        return {
            "archive": str(self.archive),
            "seconds": round(self.seconds, 2),
            "steps": self.steps,
            "models_missing": self.models_missing,
            "resumed": self.resumed,
        }


def decrypt_secrets(path: Path, manifest: dict, passphrase: str) -> dict[str, dict[str, str]]:
    """The archive's Secrets: `<namespace setting>/<name>` -> {key: base64 value}."""
    token = bk.read_part(path, bk.SECRETS)
    return json.loads(bk.decrypt(token, passphrase, manifest.get("secrets") or {}, str(path)))


def stack_secrets(settings, saved: dict[str, dict[str, str]], read_cluster=None):
    """The Secret objects for `settings`' stack with the archive's values, built the way deploy
    builds them (k3stack.secrets.resolve reading the archive first, then `read_cluster` for a
    Secret the archive does not hold): a restore into another namespace gets URLs for that
    namespace. A secret set in the settings still wins (and one a volume is pinned to, differing
    from the archive's, is refused by resolve)."""
    from .apply import stamp_instance
    from .secrets import LOCATIONS, decode, resolve

    by_location = {}
    for ns_setting, name, _ in LOCATIONS.values():
        data = saved.get(f"{ns_setting}/{name}")
        if data is not None:
            by_location[(settings[ns_setting], name)] = decode({"data": data})

    def read(namespace: str, name: str) -> dict[str, str] | None:
        if (namespace, name) in by_location:
            return by_location[(namespace, name)]
        return read_cluster(namespace, name) if read_cluster is not None else None

    resolved = resolve(settings, read)
    return resolved, stamp_instance(resolved.objects, settings["STACK_NAMESPACE"])


def restore(
    kube,
    settings,
    path: Path,
    console: Console,
    *,
    passphrase: str,
    force: bool = False,
    runner: bk.PodExec | None = None,
    wait: Callable[[list[str]], None] | None = None,
    models: Callable[[], list[str]] | None = None,
) -> RestoreResult:
    """Restore the archive at `path` onto the deployed stack of `settings` (see the module's
    docstring for the order). `wait(deployments)` waits for the rolled Deployments (default: the
    rollout rules of k3stack.rollout, 600 s); `models()` lists Ollama's models (default: through
    the service proxy) so the missing ones are reported in `models_missing` for a pull.

    Raises RestoreError/BackupError: a damaged archive, a wrong passphrase, a database with data
    (without `force`), a PostgreSQL older than the dump's, no running pod, a failed command."""
    from .manifests import MANAGER

    started = time.monotonic()
    path = Path(path)
    manifest = bk.verify(path)
    saved = decrypt_secrets(path, manifest, passphrase)
    archive = bk.archive_id(path)
    namespace = settings["STACK_NAMESPACE"]
    runner = runner or bk.PodExec(kube)
    result = RestoreResult(path, 0.0)
    postgres = bk.running_pod(kube, namespace, bk.POSTGRES, bk.POSTGRES)
    webui = bk.running_pod(kube, namespace, bk.OPEN_WEBUI, bk.OPEN_WEBUI)
    user, database = bk.pg_target(postgres, settings)
    connect = bk.pg_args(user, database)

    def psql(sql: bytes, *options: str) -> str:
        argv = [*bk.feed(len(sql)), "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *options, *connect]
        return runner.run(namespace, postgres.name, bk.POSTGRES, argv, stdin=_bytes(sql), stdin_size=len(sql)).decode()

    version = runner.run(namespace, postgres.name, bk.POSTGRES, ["pg_restore", "--version"]).decode()
    have, need = bk.pg_major_of(version), (manifest.get("database") or {}).get("major")
    if have is not None and need is not None and have < need:
        raise RestoreError(
            f"{path}: the dump is from PostgreSQL {need}, the stack runs {have} ({postgres.image}); "
            "nothing was changed",
            f"deploy with POSTGRES_IMAGE of major {need} or newer, then restore",
        )

    marker = kube.get("v1", "ConfigMap", MARKER, namespace)
    result.resumed = marker is not None and (marker.get("data") or {}).get("archive") == archive
    if result.resumed:
        console.note(f"resuming the interrupted restore of {path.name} (ConfigMap {namespace}/{MARKER})")
    elif not force:
        counts = psql(HAS_DATA_SQL.encode() + b";\n", "-A", "-t", "-F", " ").split()
        users, chats = (int(c) for c in counts[:2])
        if (refused := refusal(users, chats, database, namespace)) is not None:
            raise refused
    kube.apply(_marker(namespace, archive, path), field_manager=MANAGER, force=True)

    console.step("Secrets")

    def read_cluster(namespace: str, name: str) -> dict[str, str] | None:
        from .secrets import decode

        obj = kube.get("v1", "Secret", name, namespace)
        return decode(obj) if obj else None

    resolved, objects = stack_secrets(settings, saved, read_cluster)
    console.add_secrets(resolved.values.values())
    for m in objects:
        kube.apply(m.obj, field_manager=MANAGER, force=True)
        console.result(f"{m.describe()} ({m.namespace})", "restored")
    result.steps.append("secrets")

    console.step(f"database {database}")
    psql(password_sql(user, resolved.values["POSTGRES_PASSWORD"]))
    with tempfile.TemporaryDirectory(prefix=".k3stack-restore-") as work:
        dump = bk.extract(path, bk.DUMP, Path(work) / bk.DUMP)
        size = dump.stat().st_size
        argv = [*bk.feed(size), "pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction"]
        argv += ["--exit-on-error", *connect]
        begun = time.monotonic()
        with open(dump, "rb") as f:
            runner.run(namespace, postgres.name, bk.POSTGRES, argv, stdin=f, stdin_size=size)
        console.line(f"{bk.DUMP}: {human_size(size)} restored in {time.monotonic() - begun:.1f}s")
        result.steps.append("database")

        console.step("Open WebUI's data volume")
        volume = bk.extract(path, bk.VOLUME, Path(work) / bk.VOLUME)
        size = volume.stat().st_size
        # Emptied first (what a fresh start wrote, or half an interrupted unpack), cache aside.
        script = (
            'cd "$1" && find . -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} + && head -c "$0" | tar -xzf -'
        )
        begun = time.monotonic()
        with open(volume, "rb") as f:
            runner.run(
                namespace,
                webui.name,
                bk.OPEN_WEBUI,
                ["sh", "-c", script, str(size), bk.WEBUI_DATA],
                stdin=f,
                stdin_size=size,
            )
        console.line(f"{bk.VOLUME}: {human_size(size)} restored in {time.monotonic() - begun:.1f}s")
        result.steps.append("volume")

    console.step("rolling the pods that read the Secrets")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
    rolled = []
    for name in ROLLED:
        if kube.get("apps/v1", "Deployment", name, namespace) is None:
            continue
        kube.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            body=patch,
            content_type="application/strategic-merge-patch+json",
        )
        console.result(f"deployment.apps/{name} ({namespace})", "restarted")
        rolled.append(name)
    (wait or (lambda names: _wait(kube, namespace, names, console)))(rolled)
    result.steps.append("rolled")
    kube.delete("v1", "ConfigMap", MARKER, namespace)

    wanted = (json.loads(bk.read_part(path, bk.MODELS)) or {}).get("models") or []
    if wanted:
        try:
            present = set(models() if models is not None else bk._ollama_models(kube, settings))
            result.models_missing = [m for m in wanted if m not in present]
        except K3stackError as exc:
            result.models_missing = list(wanted)
            console.warn(f"Ollama did not answer ({exc.what}); the archive's models may need pulling")
    result.seconds = time.monotonic() - started
    console.result(str(path), "restored", f"({result.seconds:.1f}s)")
    return result


def _bytes(data: bytes):
    import io

    return io.BytesIO(data)


def _marker(namespace: str, archive: str, path: Path) -> dict:
    from .manifests import MANAGED_BY, MANAGER

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": MARKER, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
        "data": {"archive": archive, "file": path.name},
    }


def _wait(kube, namespace: str, names: list[str], console: Console, timeout: float = 600) -> None:
    from .rollout import Target, Waiter

    items = [Target("apps/v1", "Deployment", namespace, name) for name in names]
    for target, status in Waiter(kube).wait(items, timeout).items():
        console.line(f"{target.describe()} ({namespace}): {status.message}")
