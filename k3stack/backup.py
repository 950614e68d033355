"""`inv backup` as a library: one archive per run with everything the stack's data depends on.

The archive is a plain tar (written to a temporary file in the target directory, fsynced, then
renamed into place with mode 0600: an interrupted backup never leaves a partial archive) holding:

- `postgres.dump`: `pg_dump --format=custom` of Open WebUI's database, run INSIDE the PostgreSQL
  pod (exec through the API server; no port is exposed) — one transaction, so consistent;
- `open-webui-data.tar.gz`: Open WebUI's data volume (uploads, vector DB), tarred inside its pod,
  `cache/` left out;
- `secrets.enc`: the stack's Secrets (the passwords the volumes depend on), encrypted with
  Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`) under a key derived by Scrypt from a
  passphrase read from K3STACK_BACKUP_PASSPHRASE (never from argv);
- `models.json`: the model names on Ollama (pulled again on restore, not copied);
- `settings.json`: the non-secret settings that shaped the stack;
- `manifest.json`: format, versions, images, and size + sha256 of every part above.

No secret value is ever in clear text in the archive (tests/unit/test_backup.py greps it)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import __version__
from .console import Console, human_size
from .errors import K3stackError, command

FORMAT = 1
PASSPHRASE_ENV = "K3STACK_BACKUP_PASSPHRASE"
MIN_PASSPHRASE = 12
MANIFEST = "manifest.json"
DUMP = "postgres.dump"
VOLUME = "open-webui-data.tar.gz"
SECRETS = "secrets.enc"
MODELS = "models.json"
SETTINGS = "settings.json"
PARTS = (DUMP, VOLUME, SECRETS, MODELS, SETTINGS)
# Scrypt cost: 2**15 x 8 x 128 bytes = 32 MiB and ~0.1 s per derivation (RFC 7914's interactive
# figure is 2**14; a backup key is derived twice per run at most).
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
# The stack's pods, as k8s/llm-stack labels and names them.
POSTGRES = "postgres"  # app.kubernetes.io/name, container and Deployment name
OPEN_WEBUI = "open-webui"
PG_SOCKET = "/var/run/postgresql"  # the postgres container's socket directory (an emptyDir)
WEBUI_DATA = "/app/backend/data"  # Open WebUI's data volume in its container
EXCLUDED = ("./cache",)  # re-created by Open WebUI (downloaded/derived files)
CHUNK = 64 * 1024


class BackupError(K3stackError):
    """A backup or an archive cannot be used: names the archive, part or pod, and the fix."""


# -- the passphrase and encryption -------------------------------------------------------------
def passphrase_from_env(environ: dict[str, str] | None = None) -> str:
    """The backup passphrase from K3STACK_BACKUP_PASSPHRASE (never a flag: argv is visible to
    every user of the machine). Raises BackupError when it is unset or shorter than 12 characters."""
    value = (os.environ if environ is None else environ).get(PASSPHRASE_ENV, "")
    if not value:
        raise BackupError(
            f"{PASSPHRASE_ENV} is not set: the archive's Secrets are encrypted with it",
            f"export {PASSPHRASE_ENV}='<at least {MIN_PASSPHRASE} characters>' (keep it apart from the archive; "
            "without it the archive cannot be restored)",
        )
    if len(value) < MIN_PASSPHRASE:
        raise BackupError(
            f"{PASSPHRASE_ENV} is {len(value)} characters long, too short to protect the stack's passwords",
            f"use at least {MIN_PASSPHRASE} characters (a sentence works)",
        )
    return value


def _fernet(passphrase: str, kdf: dict):
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt = base64.b64decode(kdf["salt"])
    key = Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(passphrase.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(data: bytes, passphrase: str) -> tuple[bytes, dict]:
    """(Fernet token, KDF parameters) for `data`: the key is Scrypt(passphrase, random 16-byte
    salt); the parameters (salt included, nothing secret) go into the manifest."""
    kdf = {"kdf": "scrypt", **SCRYPT, "salt": base64.b64encode(os.urandom(16)).decode(), "cipher": "fernet"}
    return _fernet(passphrase, kdf).encrypt(data), kdf


def decrypt(token: bytes, passphrase: str, kdf: dict, archive: str = "the archive") -> bytes:
    """The plaintext of encrypt(). Raises BackupError when the passphrase is wrong (or the part
    was altered: Fernet authenticates, so both look the same)."""
    from cryptography.fernet import InvalidToken

    if kdf.get("kdf") != "scrypt" or kdf.get("cipher") != "fernet":
        raise BackupError(
            f"{archive}: Secrets encrypted with {kdf.get('kdf')}/{kdf.get('cipher')}, unknown here",
            "restore it with the k3stack version that wrote it (its manifest names the version), "
            "or use an archive this version wrote (scrypt/fernet)",
        )
    try:
        return _fernet(passphrase, kdf).decrypt(token)
    except InvalidToken:
        raise BackupError(
            f"{archive}: {PASSPHRASE_ENV} does not open its Secrets (wrong passphrase); nothing was changed",
            f"set {PASSPHRASE_ENV} to the passphrase the backup was made with",
        ) from None


# -- the archive -------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def write_archive(path: Path, parts: dict[str, Path], manifest: dict) -> Path:
    """Write the archive at `path` atomically: the manifest (with size and sha256 of every part
    added) and the parts, into a temporary file next to `path` (mode 0600), fsynced, then
    os.replace()d into place. An interruption (Ctrl-C included) removes the temporary file and
    leaves `path` as it was. Returns `path`."""
    path = Path(path)
    manifest = {**manifest, "parts": {}}
    for name, local in parts.items():
        manifest["parts"][name] = {"size": local.stat().st_size, "sha256": sha256_file(local)}
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, MANIFEST, io.BytesIO(body), len(body))
                for name, local in parts.items():
                    with open(local, "rb") as f:
                        _add(tar, name, f, manifest["parts"][name]["size"])
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _add(tar: tarfile.TarFile, name: str, f: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    tar.addfile(info, f)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path) -> dict:
    """The archive's manifest. Raises BackupError (naming the file) when it is not a k3stack
    archive of a format this version reads."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:") as tar:
            member = tar.getmember(MANIFEST)
            manifest = json.load(tar.extractfile(member))  # type: ignore[arg-type]
    except FileNotFoundError:
        raise BackupError(f"{path}: no such file", f"give the path {command('backup')} printed") from None
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        raise BackupError(
            f"{path}: not a k3stack backup archive ({exc})", f"give an archive written by {command('backup')}"
        ) from None
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"{path}: archive format {manifest.get('format')!r}, this k3stack reads format {FORMAT}",
            "restore it with the k3stack version that wrote it (manifest.json names it)",
        )
    return manifest


def verify(path: Path) -> dict:
    """Check every part against the manifest (present, size, sha256) before anything is touched;
    returns the manifest. Raises BackupError naming the first part that does not match."""
    path = Path(path)
    manifest = read_manifest(path)
    expected = manifest.get("parts") or {}
    with tarfile.open(path, "r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in PARTS:
            want = expected.get(name)
            member = members.get(name)
            if want is None or member is None:
                raise BackupError(
                    f"{path}: part {name} is missing{'' if member else ' from the archive'}",
                    f"the archive is incomplete or not from {command('backup')}; use another one",
                )
            digest = hashlib.sha256()
            f = tar.extractfile(member)
            assert f is not None
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
            if member.size != want["size"] or digest.hexdigest() != want["sha256"]:
                raise BackupError(
                    f"{path}: part {name} does not match its sha256 in the manifest (damaged or altered); "
                    "nothing was changed",
                    "use another copy of the archive",
                )
    return manifest


def archive_id(path: Path) -> str:
    """The sha256 of the archive's manifest: names one backup (the restore marker keeps it)."""
    with tarfile.open(path, "r:") as tar:
        data = tar.extractfile(tar.getmember(MANIFEST)).read()  # type: ignore[union-attr]
    return hashlib.sha256(data).hexdigest()


def extract(path: Path, name: str, dest: Path) -> Path:
    """Copy one part of the archive to `dest` (mode 0600)."""
    with tarfile.open(path, "r:") as tar:
        source = tar.extractfile(tar.getmember(name))
        assert source is not None
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(1024 * 1024):
                out.write(chunk)
    return dest


def read_part(path: Path, name: str) -> bytes:
    """One (small) part of the archive, whole: models.json, settings.json, secrets.enc."""
    with tarfile.open(path, "r:") as tar:
        return tar.extractfile(tar.getmember(name)).read()  # type: ignore[union-attr]


# -- running commands in the stack's pods ---------------------------------------------------------
class ExecError(BackupError):
    """A command in a pod failed (its exit code and the end of its stderr) or could not start."""


def feed(size: int) -> list[str]:
    """The start of an argv that reads exactly `size` bytes of stdin and then ends it for the
    command after it (`sh -c 'head -c N | exec CMD...'`). The v4 exec protocol (Kubernetes < 1.30)
    cannot close stdin: without this a reader such as pg_restore would wait for EOF forever."""
    return ["sh", "-c", 'head -c "$0" | exec "$@"', str(size)]


class PodExec:
    """The runner backup and restore use (tests give a fake with the same run()): commands in
    pods through the API server's pods/exec (WebSocket, channel.k8s.io protocol)
    with the official client's `stream()`: stdout streamed to a file (never held whole in
    memory), stdin streamed from one, the exit status from the status channel."""

    def __init__(self, kube, *, idle_timeout: float = 300):
        from kubernetes import client

        # stream() swaps the ApiClient's call_api while it connects: a client of its own keeps
        # the Kube wrapper's requests (other threads) on plain HTTP.
        self.api = client.CoreV1Api(client.ApiClient(kube.api.configuration))
        self.server = kube.server
        self.idle_timeout = idle_timeout

    def run(
        self,
        namespace: str,
        pod: str,
        container: str,
        argv: list[str],
        *,
        stdout: BinaryIO | None = None,
        stdin: BinaryIO | None = None,
        stdin_size: int = 0,
        ok: Iterable[int] = (0,),
    ) -> bytes:
        """Run `argv` in `container` of `pod`; stdout goes to `stdout` when given (returns b""),
        else it is returned. `stdin_size` bytes are sent from `stdin` (pair it with feed()).
        Raises ExecError (pod, command, exit code, stderr's last line) unless the exit code is in `ok`."""
        from kubernetes.client.rest import ApiException
        from kubernetes.stream import stream

        where = f"pod {namespace}/{pod} (container {container})"
        try:
            ws = stream(
                self.api.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=argv,
                container=container,
                stdin=stdin is not None,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )
        except ApiException as exc:
            raise ExecError(
                f"{where}: cannot exec `{argv[0]}` through the API server at {self.server} ({exc.reason})",
                f"is the pod Running ({command('status')}) and may this kubeconfig create pods/exec?",
            ) from None
        collected = io.BytesIO()
        sink = stdout if stdout is not None else collected
        stderr, status = bytearray(), bytearray()
        try:
            self._pump(ws, where, argv, stdin, stdin_size, sink, stderr, status)
        finally:
            ws.close()
        code, message = exit_status(bytes(status))
        if code not in tuple(ok):
            tail = bytes(stderr).decode(errors="replace").strip().splitlines()
            raise ExecError(
                f"{where}: `{_shown(argv)}` failed ({message}): {tail[-1] if tail else 'no stderr'}",
                "the pod's log (`kubectl logs`) may say more",
            )
        return collected.getvalue()

    def _pump(self, ws, where, argv, stdin, stdin_size, sink, stderr: bytearray, status: bytearray) -> None:
        """Send stdin, collect stdout/stderr/status until the server closes the connection. A
        connection that breaks ends the loop: the status (or its absence) then tells what happened."""
        import ssl

        from websocket import WebSocketException

        sent, last = 0, time.monotonic()
        try:
            while True:
                if stdin is not None and sent < stdin_size:
                    chunk = stdin.read(min(CHUNK, stdin_size - sent))
                    if not chunk:
                        raise ExecError(f"{where}: stdin ended after {sent} of {stdin_size} bytes")
                    ws.write_stdin(chunk)
                    sent += len(chunk)
                    if sent == stdin_size:
                        ws.close_channel(0)  # v5 only; `feed` ends it on v4
                if not ws.is_open():
                    break
                ws.update(timeout=0 if stdin is not None and sent < stdin_size else 1)
                got = False
                # Take what update() buffered straight from the client's channel buffers: its
                # read_channel() reads MORE frames when a channel is empty, and read_all() then
                # dropped those with every channel buffer — stdout bytes lost (seen as a flaky
                # 256 KB echo on the bed; a dump would have been cut the same way).
                buffered = ws._channels
                for channel, target in ((1, sink), (2, None), (3, None)):
                    data = buffered.pop(channel, b"")
                    if not data:
                        continue
                    got = True
                    if channel == 1:
                        target.write(data)
                    elif channel == 2:
                        stderr += data
                        del stderr[:-8192]
                    else:
                        status += data
                ws._all = type(ws._all)()  # the client's copy of all output: dropped (a dump held twice)
                if got or sent < stdin_size:
                    last = time.monotonic()
                elif time.monotonic() - last > self.idle_timeout:
                    raise ExecError(f"{where}: `{argv[0]}` sent nothing for {self.idle_timeout:.0f}s")
        except (WebSocketException, ConnectionError, ssl.SSLError):
            # The connection broke (the command exited before reading all of stdin, the API server
            # went away): the status, or its absence, says what happened. A failing `sink` (disk
            # full) is not caught here.
            return


def _shown(argv: list[str]) -> str:
    """The command for a message: the feed() wrapper left out (no secret is ever on argv)."""
    if argv[:3] == feed(0)[:3]:
        argv = argv[4:]
    return " ".join(argv[:3])


def exit_status(status: bytes) -> tuple[int, str]:
    """(exit code, text) from the exec status channel (3): a metav1.Status — Success, or Failure
    with reason NonZeroExitCode and the code in details.causes[ExitCode]; no status at all (the
    connection dropped) counts as -1."""
    if not status.strip():
        return -1, "the exec connection closed without an exit status"
    try:
        data = json.loads(status)
    except ValueError:
        return -1, f"unreadable exec status {status[:100]!r}"
    if data.get("status") == "Success":
        return 0, "exit 0"
    for cause in (data.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", -1)), f"exit {cause.get('message')}"
    return -1, str(data.get("message") or data)


# -- the stack's pods ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PodInfo:
    name: str
    image: str
    env: dict[str, str]  # the container's literal env values (valueFrom left out)


def running_pod(kube, namespace: str, app: str, container: str) -> PodInfo:
    """The Running, Ready, not-terminating pod labelled app.kubernetes.io/name=`app`. Raises
    BackupError naming the namespace and what to do when there is none."""
    pods = kube.list("v1", "Pod", namespace, label_selector=f"app.kubernetes.io/name={app}")
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if status.get("phase") != "Running" or not ready or pod["metadata"].get("deletionTimestamp"):
            continue
        for c in pod["spec"]["containers"]:
            if c["name"] == container:
                env = {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}
                return PodInfo(pod["metadata"]["name"], c.get("image", ""), env)
    raise BackupError(
        f"no running {app} pod in namespace {namespace}",
        f"deploy the stack first ({command('deploy')}; {command('status')} shows what is not ready)",
    )


def pg_target(info: PodInfo, settings) -> tuple[str, str]:
    """(user, database) as the PostgreSQL container runs them (its env), else the settings'."""
    return info.env.get("POSTGRES_USER") or settings["POSTGRES_USER"], info.env.get("POSTGRES_DB") or settings[
        "POSTGRES_DB"
    ]


def pg_args(user: str, database: str) -> list[str]:
    """Connection options for the PostgreSQL tools inside the pod: the local socket (trust
    inside the container, so no password is needed or passed)."""
    return ["-h", PG_SOCKET, "-U", user, "-d", database]


def secret_locations(settings) -> dict[str, tuple[str, str]]:
    """Secret key in the archive (`<namespace setting>/<name>`) -> (namespace, name), for every
    Secret k3stack keeps (k3stack/secrets.py LOCATIONS)."""
    from .secrets import LOCATIONS

    return {f"{ns}/{name}": (settings[ns], name) for ns, name, _ in LOCATIONS.values()}


# -- backup --------------------------------------------------------------------------------------
@dataclass
class BackupResult:
    path: Path
    size: int
    seconds: float
    manifest: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """For `inv backup --json`: path, size (bytes), seconds, parts (size + sha256), warnings."""
        return {
            "path": str(self.path),
            "size": self.size,
            "seconds": round(self.seconds, 2),
            "parts": self.manifest.get("parts", {}),
            "warnings": self.warnings,
        }


def default_path(directory: Path, namespace: str, now: dt.datetime) -> Path:
    """`<dir>/k3stack-<namespace>-<UTC time>.tar` (one archive per run)."""
    return Path(directory) / f"k3stack-{namespace}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar"


def backup(
    kube,
    settings,
    console: Console,
    *,
    passphrase: str,
    to: Path | None = None,
    runner: PodExec | None = None,
    models: Callable[[], list[str]] | None = None,
    now: dt.datetime | None = None,
) -> BackupResult:
    """Back the stack of `settings` up into one archive (see the module's docstring). `to` is a
    directory (the archive gets a dated name) or a file path; default the current directory.
    `models` lists Ollama's models (default: through the API server's service proxy); when
    Ollama does not answer, the archive records no list and a warning says so.

    Raises BackupError (no running pod, a failed command, an unwritable target); nothing is
    left at the target then."""
    started = time.monotonic()
    now = now or dt.datetime.now(dt.UTC)
    namespace = settings["STACK_NAMESPACE"]
    target = Path(to) if to else Path.cwd()
    path = default_path(target, namespace, now) if target.is_dir() else target
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent}: no such directory for the archive", "create it or pass --to DIR")
    runner = runner or PodExec(kube)
    postgres = running_pod(kube, namespace, POSTGRES, POSTGRES)
    webui = running_pod(kube, namespace, OPEN_WEBUI, OPEN_WEBUI)
    user, database = pg_target(postgres, settings)
    result = BackupResult(path, 0, 0.0)
    with tempfile.TemporaryDirectory(prefix=".k3stack-backup-", dir=path.parent) as work:
        work_dir = Path(work)  # mode 0700: the parts never sit anywhere world-readable
        parts: dict[str, Path] = {}

        def timed(name: str, what: str, produce: Callable[[BinaryIO], None]) -> None:
            begun = time.monotonic()
            console.line(f"{what} ...")
            local = work_dir / name
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                produce(out)
            parts[name] = local
            console.line(f"{name}: {human_size(local.stat().st_size)} in {time.monotonic() - begun:.1f}s")

        version = runner.run(namespace, postgres.name, POSTGRES, ["pg_dump", "--version"]).decode().strip()
        timed(
            DUMP,
            f"pg_dump of database {database} in pod {postgres.name}",
            lambda out: runner.run(
                namespace, postgres.name, POSTGRES, ["pg_dump", "--format=custom", *pg_args(user, database)], stdout=out
            ),
        )

        def volume(out: BinaryIO) -> None:
            argv = ["tar", "-C", WEBUI_DATA, *(f"--exclude={e}" for e in EXCLUDED), "-czf", "-", "."]
            # GNU tar exits 1 when a file changed while it was read (Open WebUI keeps running).
            runner.run(namespace, webui.name, OPEN_WEBUI, argv, stdout=out, ok=(0, 1))

        timed(VOLUME, f"Open WebUI's data volume in pod {webui.name}", volume)

        secrets = {}
        for key, (ns, name) in secret_locations(settings).items():
            obj = kube.get("v1", "Secret", name, ns)
            if obj is not None:
                secrets[key] = obj.get("data") or {}  # base64 as the API has it
                console.add_secrets(base64.b64decode(v).decode(errors="replace") for v in secrets[key].values())
        token, kdf = encrypt(json.dumps(secrets, sort_keys=True).encode(), passphrase)
        timed(SECRETS, f"{len(secrets)} Secrets (encrypted)", lambda out: out.write(token))

        try:
            names = models() if models is not None else _ollama_models(kube, settings)
        except K3stackError as exc:
            names = None
            result.warnings.append(f"the model list is not in the archive (Ollama did not answer: {exc.what})")
            console.warn(result.warnings[-1])
        timed(MODELS, "model list", lambda out: out.write(json.dumps({"models": names}, indent=2).encode()))
        plain = {"env": settings.env_name, "values": dict(sorted(settings.values.items()))}
        timed(SETTINGS, "settings (no secrets)", lambda out: out.write(json.dumps(plain, indent=2).encode()))

        manifest = {
            "format": FORMAT,
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "k3stack": __version__,
            "namespace": namespace,
            "database": {"name": database, "user": user, "pg_dump": version, "major": pg_major_of(version)},
            "images": {POSTGRES: postgres.image, OPEN_WEBUI: webui.image},
            "secrets": {"count": len(secrets), **kdf},
            "excluded": list(EXCLUDED),
        }
        write_archive(path, parts, manifest)
    result.manifest = read_manifest(path)
    result.size = path.stat().st_size
    result.seconds = time.monotonic() - started
    console.result(str(path), "created", f"({human_size(result.size)}, {result.seconds:.1f}s, mode 0600)")
    return result


def _ollama_models(kube, settings) -> list[str]:
    from .ollama import Ollama

    return [m.name for m in Ollama.from_settings(kube, settings).models()]


def pg_major_of(version: str) -> int | None:
    """17 from `pg_dump (PostgreSQL) 17.6 (Debian 17.6-1.pgdg120+1)`; None when not found."""
    found = re.search(r"\)\s*(\d+)", version) or re.search(r"(\d+)(?:\.\d+)?", version)
    return int(found.group(1)) if found else None


# -- the guard before an upgrade --------------------------------------------------------------------
STATEFUL = {POSTGRES: POSTGRES, OPEN_WEBUI: OPEN_WEBUI}  # Deployment -> the container whose image matters


class UpgradeRefusedError(BackupError):
    """A deploy would change PostgreSQL's major version in place (the data directory would not start)."""


def image_major(image: str) -> int | None:
    """The major version in an image's tag: postgres:17.6 → 17, postgres:16-alpine → 16,
    repo:5000/postgres:15.3@sha256:… → 15; None without a numeric tag (a digest only, `latest`)."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    found = re.match(r"v?(\d+)", tag)
    return int(found.group(1)) if found else None


def _images(objects: Iterable[dict]) -> dict[tuple[str, str], str]:
    """(namespace, Deployment) -> image of its stateful container, for the stateful Deployments."""
    found = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if obj.get("kind") != "Deployment" or name not in STATEFUL:
            continue
        for c in ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
            if c.get("name") == STATEFUL[name]:
                found[(meta.get("namespace", ""), name)] = c.get("image", "")
    return found


def needs_backup(live_objects: Iterable[dict], rendered_objects: Iterable[dict]) -> list[str]:
    """Why a deploy of `rendered_objects` over `live_objects` (plain dicts) must take a backup
    first: one reason per stateful Deployment (PostgreSQL, Open WebUI — whose start migrates the
    database) whose image changes. Empty: nothing stateful changes (or nothing is there yet).

    Raises UpgradeRefusedError when PostgreSQL's MAJOR version would change (up or down, or to an
    image whose major cannot be read): the new server cannot start on the old data directory;
    the hint is the dump/restore procedure."""
    live, rendered = _images(live_objects), _images(rendered_objects)
    reasons = []
    for key in sorted(rendered):
        before, after = live.get(key), rendered[key]
        if before is None or before == after:
            continue
        namespace, name = key
        if name == POSTGRES:
            old, new = image_major(before), image_major(after)
            if old is None or new is None or old != new:
                raise UpgradeRefusedError(
                    f"deployment/postgres ({namespace}): POSTGRES_IMAGE {before} → {after} changes PostgreSQL's "
                    f"major version ({old if old is not None else '?'} → {new if new is not None else '?'}); the new "
                    f"server cannot start on the old data directory",
                    f"keep POSTGRES_IMAGE={before} and deploy, then {command('backup')}, "
                    f"{command('destroy --purge --yes')}, set POSTGRES_IMAGE={after}, {command('deploy')}, "
                    f"{command('restore ARCHIVE')} (the dump is restored into the new major)",
                )
            reasons.append(f"deployment/postgres ({namespace}): image {before} → {after}")
        else:
            reasons.append(
                f"deployment/open-webui ({namespace}): image {before} → {after} (its start migrates the database, "
                "with no way back)"
            )
    return reasons


def upgrade_decision(reasons: list[str], choice: bool | None, ci: bool) -> bool:
    """Whether deploy takes a backup before applying: `reasons` from needs_backup, `choice` the
    user's flag (True --backup, False --skip-backup, None not given), `ci` whether CI=true. Nothing
    stateful changes → False. Under CI without an explicit choice → UpgradeRefusedError naming the
    reasons (a pipeline must decide, not a default)."""
    if not reasons:
        return False
    if choice is None and ci:
        raise UpgradeRefusedError(
            f"this deploy changes stateful images ({'; '.join(reasons)}) and CI=true gave no backup choice",
            "pass --backup (K3STACK_BACKUP_PASSPHRASE set; the archive goes to --backup-dir) or --skip-backup "
            "to deploy without one",
        )
    return choice is not False


def rollback_hint(reasons: list[str], archive: Path | None) -> str:
    """What to tell a person when the rollout after a guarded change fails: the previous images
    (from the reasons) and the archive to restore."""
    previous = [r.split(": image ", 1)[1].split(" → ", 1)[0] for r in reasons if ": image " in r]
    where = command(f"restore {archive}") if archive else f"{command('restore ARCHIVE')} (your last backup)"
    images = ", ".join(previous) or "the previous images"
    return f"roll back: set the image settings back to {images}, {command('deploy')}, then {where}"


def guard_upgrade(
    kube,
    settings,
    live_objects: Iterable[dict],
    rendered_objects: Iterable[dict],
    console: Console,
    *,
    choice: bool | None,
    ci: bool,
    to: Path | None = None,
    runner: PodExec | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[list[str], BackupResult | None]:
    """The guard deploy runs after listing the live objects and before applying: (reasons, the
    backup taken or None). Raises UpgradeRefusedError (a PostgreSQL major change; CI without a
    choice) or BackupError (no passphrase, a failed backup) — nothing has been applied then."""
    live, rendered = list(live_objects), list(rendered_objects)
    reasons = needs_backup(live, rendered)
    if not upgrade_decision(reasons, choice, ci):
        for reason in reasons:
            console.warn(f"{reason}: deploying without a backup (--skip-backup)")
        return reasons, None
    console.step(f"backup before the upgrade: {'; '.join(reasons)}")
    passphrase = passphrase_from_env(environ)
    return reasons, backup(kube, settings, console, passphrase=passphrase, to=to, runner=runner)
