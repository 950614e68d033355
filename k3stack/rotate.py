"""`inv rotate SECRET` as a library: the only way to change a password of a running install.

Order, per secret (ROTATIONS), so that failing anywhere loses nothing and a re-run converges:
 0. journal: the new value (and the old one) written to a Secret of its own,
    `k3stack-rotate-<setting>` next to the Secret it changes, BEFORE anything else changes; a re-run
    finds it and finishes that rotation with the same value (a value generated in memory and lost
    with the process would leave the database with a password nobody knows);
 1. the running service (PostgreSQL: ALTER ROLE with a SCRAM verifier over the local socket, the
    password itself never sent; Redis: CONFIG SET requirepass) — skipped when the new value
    already signs in there;
 2. the Secrets, only the keys derived from the value (a merge patch; unchanged keys untouched),
    built the way deploy builds them (k3stack.secrets.resolve), so the next deploy changes nothing;
 3. the Deployments that read them rolled by setting their pod template's secret checksum to what
    deploy computes (one roll, none again at the next deploy), and waited for;
 4. verified: the new value signs in and the old one is refused (PostgreSQL, Redis), the Secret
    holds it (WEBUI_SECRET_KEY), the htpasswd line accepts the new password only (Netdata);
 5. the journal removed.
Passwords reach the pods only on exec stdin (never argv), and are redacted from every line."""

from __future__ import annotations

import base64
import json
import secrets as random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import backup as bk
from .console import Console
from .errors import K3stackError, command

CHECKSUM_ANNOTATION = "k3stack.dev/secret-checksum"  # on the pod templates of k8s/llm-stack
JOURNAL_PREFIX = "k3stack-rotate-"


class RotateError(K3stackError):
    """A rotation cannot start or go on; names the secret, object or pod and the fix."""


@dataclass(frozen=True)
class Rotation:
    """What rotating one secret changes, in order: `live` the running service changed first
    ("postgres", "redis" or None), `secrets` (namespace setting, Secret, keys) patched next,
    `rollouts` the Deployments (stack namespace) rolled after, `warning` for the result."""

    setting: str
    live: str | None
    secrets: tuple[tuple[str, str, tuple[str, ...]], ...]
    rollouts: tuple[str, ...]
    warning: str | None = None


STACK, MONITORING = "STACK_NAMESPACE", "MONITORING_NAMESPACE"
ROTATIONS: dict[str, Rotation] = {
    "POSTGRES_PASSWORD": Rotation(
        "POSTGRES_PASSWORD",
        "postgres",
        ((STACK, "postgres", ("POSTGRES_PASSWORD",)), (STACK, "open-webui", ("DATABASE_URL",))),
        ("open-webui",),
    ),
    "REDIS_PASSWORD": Rotation(
        "REDIS_PASSWORD",
        "redis",
        ((STACK, "redis", ("REDIS_PASSWORD", "redis.conf")), (STACK, "open-webui", ("REDIS_URL",))),
        ("redis", "open-webui"),
    ),
    "WEBUI_SECRET_KEY": Rotation(
        "WEBUI_SECRET_KEY",
        None,
        ((STACK, "open-webui", ("WEBUI_SECRET_KEY",)),),
        ("open-webui",),
        "every user of Open WebUI is signed out (their sessions were signed with the old key) and signs in again",
    ),
    "NETDATA_PASSWORD": Rotation(
        "NETDATA_PASSWORD", None, ((MONITORING, "netdata-basic-auth", ("password", "users")),), ()
    ),
}


def steps(setting: str) -> list[str]:
    """The steps of rotating `setting`, in the order they run (see the module's docstring):
    ["journal", "live <service>"?, "secret <name>"..., "rollout <deployment>"..., "verify", "journal removed"].
    Raises RotateError for a setting that cannot be rotated."""
    rotation = rotation_of(setting)
    out = ["journal"]
    if rotation.live:
        out.append(f"live {rotation.live}")
    out += [f"secret {name}" for _, name, _ in rotation.secrets]
    out += [f"rollout {name}" for name in rotation.rollouts]
    return [*out, "verify", "journal removed"]


def rotation_of(setting: str) -> Rotation:
    """The Rotation of `setting`; RotateError naming the ones that can be rotated otherwise."""
    if setting not in ROTATIONS:
        extra = (
            " (Open WebUI reads it only while its database has no user: change it in Open WebUI, Settings > Account)"
            if setting == "WEBUI_ADMIN_PASSWORD"
            else ""
        )
        raise RotateError(f"{setting}: cannot be rotated{extra}", f"rotate one of {', '.join(ROTATIONS)}")
    return ROTATIONS[setting]


def journal_name(setting: str) -> str:
    """The journal Secret's name: `k3stack-rotate-postgres-password` for POSTGRES_PASSWORD."""
    return JOURNAL_PREFIX + setting.lower().replace("_", "-")


def pending(kube, settings) -> list[str]:
    """The settings whose rotation stopped halfway (a journal Secret is there), in ROTATIONS' order.
    Deploy must stop while one is pending (the running service may already use the new value while
    the Secrets still hold the old one): RotateError from `refuse_pending`. One LIST of k3stack's
    Secrets (managed-by label, as rotate() writes its journal) per namespace a journal can be in,
    not a GET per journal."""
    from .manifests import MANAGED_BY, MANAGER
    from .secrets import LOCATIONS

    where = {setting: (settings[LOCATIONS[setting][0]], journal_name(setting)) for setting in ROTATIONS}
    found = {
        (namespace, obj["metadata"]["name"])
        for namespace in sorted({namespace for namespace, _ in where.values()})
        for obj in kube.list("v1", "Secret", namespace, label_selector=f"{MANAGED_BY}={MANAGER}")
    }
    return [setting for setting in ROTATIONS if where[setting] in found]


def refuse_pending(kube, settings) -> None:
    """Raise RotateError naming the unfinished rotations and the command that finishes them (for
    deploy, before it reads the Secrets); nothing when none is pending."""
    if names := pending(kube, settings):
        raise RotateError(
            f"the rotation of {', '.join(names)} stopped halfway; deploying now could write the old value back",
            " and ".join(command(f"rotate {name} --yes") for name in names) + " finishes it, then deploy",
        )


def check_value(setting: str, value: str) -> None:
    """Refuse a new value that cannot travel one line of stdin or be a password: empty, shorter than
    12 characters, or holding a line break or NUL. Raises RotateError (the value is never shown)."""
    if len(value) < 12:
        raise RotateError(f"{setting}: the new value is shorter than 12 characters", "give a longer one, or none")
    if any(c in value for c in "\r\n\0"):
        raise RotateError(f"{setting}: the new value holds a line break or NUL", "give one without, or none")
    if setting in ("NETDATA_PASSWORD",) and len(value.encode()) > 72:
        raise RotateError(f"{setting}: the new value is longer than 72 bytes (bcrypt)", "give a shorter one")


def choose(
    setting: str, *, given: str | None, in_settings: str | None, journal: dict[str, str] | None, current: str
) -> tuple[str, str]:
    """(new, old) for a rotation. New: `given`, else the settings' value (changed there first), else
    the journal's (a rotation that stopped halfway), else generated (secrets.token_urlsafe(32)). Old:
    the journal's when there is one (the Secret may already hold the new value), else `current`.
    Raises RotateError when the settings hold a value other than the new one (the next deploy would
    take it back) or when nothing would change."""
    old = (journal or {}).get("old") or current
    if in_settings is not None:
        if given is not None and given != in_settings:
            raise RotateError(
                f"{setting}: the settings hold another value; the next deploy would take the rotation back",
                f"give the same value, or set {setting} in the settings to the new value and rotate without one",
            )
        if in_settings == old and (journal or {}).get("new") in (None, in_settings):
            raise RotateError(
                f"{setting}: the settings hold the current value; a rotation would be taken back by the next deploy",
                f"remove {setting} from the settings (the cluster's Secret keeps it) or set it to the new value",
            )
        new = in_settings
    else:
        new = given or (journal or {}).get("new") or random.token_urlsafe(32)
    if new == old:
        raise RotateError(
            f"{setting}: the new value is the current one; nothing to rotate", "give another value, or none"
        )
    check_value(setting, new)
    return new, old


def patch_of(current: dict[str, str], desired: dict[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    """The `data` merge patch (base64 values) that makes `keys` of a Secret's decoded `current` equal
    `desired`'s; {} when they already are (the step is then a no-op)."""
    return {k: base64.b64encode(desired[k].encode()).decode() for k in keys if current.get(k) != desired[k]}


@dataclass
class RotateResult:
    """What a rotation did: `steps` as (step, "done" | "already" | "skipped"), `seconds` wall time,
    `resumed` whether a journal of an earlier run was found, `warnings` for the person."""

    setting: str
    seconds: float = 0.0
    steps: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed: bool = False

    def to_json(self) -> dict:
        """The result for `--json`: no secret value in it."""
        return {
            "setting": self.setting,
            "seconds": round(self.seconds, 2),
            "steps": [list(s) for s in self.steps],
            "warnings": self.warnings,
            "resumed": self.resumed,
        }


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _stdin(data: bytes):
    import io

    return io.BytesIO(data)


class _Live:
    """The running PostgreSQL and Redis, through exec (PodExec) — passwords on stdin only."""

    # sh reads the first line of stdin into the client's password variable; the rest stays for it
    PG_LOGIN = (
        "IFS= read -r PGPASSWORD; export PGPASSWORD; "
        'exec psql -X -w -q -A -t -h 127.0.0.1 -U "$0" -d "$1" -c "SELECT 1"'
    )
    REDIS_CLI = 'IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; exec redis-cli --no-auth-warning -h 127.0.0.1 "$@"'

    def __init__(self, kube, settings, runner):
        self.kube, self.settings, self.runner = kube, settings, runner
        self.namespace = settings[STACK]

    def _run(self, app: str, argv: list[str], data: bytes, ok=(0,)) -> bytes:
        pod = bk.running_pod(self.kube, self.namespace, app, app)
        full = [*bk.feed(len(data)), *argv] if data else argv
        return self.runner.run(self.namespace, pod.name, app, full, stdin=_stdin(data), stdin_size=len(data), ok=ok)

    # -- PostgreSQL
    def _pg(self) -> tuple[str, str]:
        return bk.pg_target(bk.running_pod(self.kube, self.namespace, bk.POSTGRES, bk.POSTGRES), self.settings)

    def pg_signs_in(self, password: str) -> bool:
        """Whether `password` signs in over TCP (scram-sha-256), as Open WebUI does."""
        user, database = self._pg()
        out = self._run(
            bk.POSTGRES, ["sh", "-c", self.PG_LOGIN, user, database], password.encode() + b"\n", ok=(0, 1, 2)
        )
        return out.strip() == b"1"

    def pg_set(self, password: str) -> None:
        """ALTER ROLE over the local socket, with the SCRAM verifier (the password never leaves here)."""
        from .restore import quote_ident, scram_verifier

        user, database = self._pg()
        sql = f"ALTER ROLE {quote_ident(user)} PASSWORD '{scram_verifier(password)}';\n".encode()
        self._run(bk.POSTGRES, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *bk.pg_args(user, database)], sql)

    # -- Redis
    def redis_signs_in(self, password: str) -> bool:
        """Whether `password` is accepted by the running Redis (PING answers PONG)."""
        out = self._run(
            "redis", ["sh", "-c", self.REDIS_CLI, "redis-cli", "PING"], password.encode() + b"\n", ok=(0, 1)
        )
        return out.strip() == b"PONG"

    def redis_set(self, auth: str, password: str) -> None:
        """CONFIG SET requirepass on the running Redis, signed in with `auth`; the new password is
        the rest of stdin (`redis-cli -x`). Raises RotateError unless Redis answers OK."""
        data = auth.encode() + b"\n" + password.encode()
        argv = ["sh", "-c", self.REDIS_CLI, "redis-cli", "-x", "CONFIG", "SET", "requirepass"]
        out = self._run("redis", argv, data, ok=(0, 1))
        if out.strip() != b"OK":
            raise RotateError(
                f"redis in namespace {self.namespace}: CONFIG SET requirepass was refused ({_first_line(out)})",
                "check that the Secret redis holds the password the running Redis has (`kubectl logs` of redis)",
            )


def _first_line(out: bytes) -> str:
    lines = out.decode(errors="replace").strip().splitlines()
    return lines[0][:200] if lines else "no answer"


def rotate(
    kube,
    settings,
    secret_name: str,
    console: Console,
    *,
    new_value: str | None = None,
    runner: bk.PodExec | None = None,
    wait: Callable[[list[str]], None] | None = None,
    timeout: float = 600,
) -> RotateResult:
    """Rotate the secret `secret_name` (a setting: POSTGRES_PASSWORD, REDIS_PASSWORD,
    WEBUI_SECRET_KEY or NETDATA_PASSWORD) of the deployed stack of `settings` to `new_value`
    (default: the settings' value when it was changed there, else the value of an unfinished
    rotation, else generated: 32 random bytes, URL-safe). Steps and their order: the module's
    docstring and `steps()`. `runner` runs commands in pods (default k3stack.backup.PodExec);
    `wait(deployments)` waits for the rolled Deployments (default: k3stack.rollout's rules,
    `timeout` seconds).

    Returns a RotateResult (steps done or already done, seconds, warnings). Raises RotateError for a
    setting that cannot be rotated, a bad new value, a Secret that is not there, a running service
    that refuses the change or a verification that fails; BackupError/KubeError/RolloutError from
    the pods and the API. Whatever it raises, running it again finishes the same rotation."""
    from .manifests import MANAGED_BY, MANAGER
    from .secrets import LOCATIONS, decode

    started = time.monotonic()
    rotation = rotation_of(secret_name)
    result = RotateResult(secret_name)
    ns_setting, home, key = LOCATIONS[secret_name]
    home_ns = settings[ns_setting]

    def read(namespace: str, name: str) -> dict[str, str] | None:
        obj = kube.get("v1", "Secret", name, namespace)
        return decode(obj) if obj else None

    cluster = read(home_ns, home)
    if cluster is None or key not in cluster:
        raise RotateError(
            f"{secret_name}: Secret {home_ns}/{home} (key {key}) is not there; nothing runs with it yet",
            f"deploy the stack first ({command('deploy')})",
        )
    journal_obj = read(home_ns, journal_name(secret_name))
    journal = json.loads(journal_obj["rotation"]) if journal_obj and "rotation" in journal_obj else None
    result.resumed = journal is not None
    new, old = choose(
        secret_name,
        given=new_value,
        in_settings=settings.secrets.get(secret_name),
        journal=journal,
        current=cluster[key],
    )
    console.add_secrets([new, old, *(journal or {}).values()])
    if journal is not None:
        console.note(
            f"finishing the rotation of {secret_name} that stopped halfway "
            f"(Secret {home_ns}/{journal_name(secret_name)})"
        )

    def done(step: str, how: str = "done") -> None:
        result.steps.append((step, how))
        console.result(step, how)

    # 0. the journal, before anything changes
    console.step(f"rotating {secret_name}")
    record = {"setting": secret_name, "new": new, "old": old}
    journal_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": journal_name(secret_name), "namespace": home_ns, "labels": {MANAGED_BY: MANAGER}},
        "type": "Opaque",
        "data": {"rotation": _b64(json.dumps(record, sort_keys=True))},
    }
    if journal == record:
        done("journal", "already")
    else:
        kube.apply(journal_secret, field_manager=MANAGER, force=True)
        done("journal")

    # 1. the running service
    live = _Live(kube, settings, runner or bk.PodExec(kube))
    if rotation.live == "postgres":
        if live.pg_signs_in(new):
            done("live postgres", "already")
        else:
            live.pg_set(new)
            done("live postgres")
    elif rotation.live == "redis":
        if live.redis_signs_in(new):
            done("live redis", "already")
        else:
            candidates = [v for v in dict.fromkeys([old, (journal or {}).get("new"), cluster[key]]) if v]
            auth = next((c for c in candidates if live.redis_signs_in(c)), None)
            if auth is None:
                raise RotateError(
                    f"redis in namespace {settings[STACK]}: neither the old nor the new password is accepted",
                    "restart Redis (`kubectl rollout restart deployment/redis`: it reads the Secret) and run again",
                )
            live.redis_set(auth, new)
            done("live redis")

    # 2. the Secrets, as deploy builds them with the new value (deploy's own plan: the same objects,
    # labels and field manager, so the next deploy finds nothing to change)
    def read_new(namespace: str, name: str) -> dict[str, str] | None:
        data = read(namespace, name)
        if data is not None and (namespace, name) == (home_ns, home):
            data = {**data, key: new}
        return data

    from .deploy import make_plan

    plan = make_plan(settings, read_new)
    console.add_secrets(plan.secrets.values.values())
    objects = {
        (m.obj["kind"], m.obj["metadata"].get("namespace"), m.obj["metadata"]["name"]): m for m in plan.manifests
    }
    for ns_key, name, keys in rotation.secrets:
        namespace = settings[ns_key]
        current = read(namespace, name)
        if current is None:
            raise RotateError(
                f"Secret {namespace}/{name} is not there", f"deploy the stack first ({command('deploy')})"
            )
        manifest = objects[("Secret", namespace, name)]
        changed = patch_of(current, decode(manifest.obj), keys)
        if changed:
            kube.apply(manifest.obj, field_manager=MANAGER, force=True)
        done(f"secret {name}", "done" if changed else "already")

    # 3. the rollouts: the Deployment as deploy renders it (its pod template's checksum changed)
    stack_ns = settings[STACK]
    for name in rotation.rollouts:
        deployment = kube.get("apps/v1", "Deployment", name, stack_ns)
        if deployment is None:
            raise RotateError(
                f"deployment {stack_ns}/{name} is not there", f"deploy the stack first ({command('deploy')})"
            )
        manifest = objects[("Deployment", stack_ns, name)]
        want = manifest.obj["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        have = (deployment["spec"]["template"]["metadata"].get("annotations") or {}).get(CHECKSUM_ANNOTATION)
        if have == want:
            done(f"rollout {name}", "already")
            continue
        kube.apply(manifest.obj, field_manager=MANAGER, force=True)
        done(f"rollout {name}")
    if rotation.rollouts:
        (wait or (lambda names: _wait(kube, stack_ns, names, console, timeout)))(list(rotation.rollouts))

    # 4. verified
    _verify(rotation, live, settings, read, new, old)
    done("verify")
    if rotation.warning:
        result.warnings.append(rotation.warning)
        console.warn(f"{secret_name} rotated: {rotation.warning}")

    # 5. the journal removed
    kube.delete("v1", "Secret", journal_name(secret_name), home_ns)
    done("journal removed")
    result.seconds = time.monotonic() - started
    console.result(f"{secret_name}", "rotated", f"({result.seconds:.1f}s)")
    return result


def _verify(rotation: Rotation, live: _Live, settings, read, new: str, old: str) -> None:
    """Raise RotateError unless the new value is in use and the old one refused."""
    setting = rotation.setting
    if rotation.live == "postgres":
        if not live.pg_signs_in(new):
            raise RotateError(f"{setting}: the new password does not sign in to PostgreSQL", "run the rotation again")
        if live.pg_signs_in(old):
            raise RotateError(f"{setting}: PostgreSQL still accepts the old password", "run the rotation again")
    elif rotation.live == "redis":
        if not live.redis_signs_in(new):
            raise RotateError(f"{setting}: Redis does not accept the new password", "run the rotation again")
        if live.redis_signs_in(old):
            raise RotateError(f"{setting}: Redis still accepts the old password", "run the rotation again")
    for ns_key, name, keys in rotation.secrets:
        data = read(settings[ns_key], name) or {}
        if "users" in keys:
            import bcrypt

            line = data.get("users", "")
            user, _, hashed = line.partition(":")
            if user != settings["NETDATA_USER"] or not bcrypt.checkpw(new.encode(), hashed.encode()):
                raise RotateError(
                    f"Secret {settings[ns_key]}/{name}: the login does not accept the new password",
                    "run the rotation again",
                )
            if bcrypt.checkpw(old.encode(), hashed.encode()):
                raise RotateError(
                    f"Secret {settings[ns_key]}/{name}: the login still accepts the old password",
                    "run the rotation again",
                )
    _, home, key = _location(setting)
    data = read(settings[_location(setting)[0]], home) or {}
    if data.get(key) != new:
        raise RotateError(
            f"Secret {settings[_location(setting)[0]]}/{home}: {key} is not the new value", "run the rotation again"
        )


def _location(setting: str) -> tuple[str, str, str]:
    from .secrets import LOCATIONS

    return LOCATIONS[setting]


def _wait(kube, namespace: str, names: list[str], console: Console, timeout: float) -> None:
    from .rollout import Target, Waiter

    items = [Target("apps/v1", "Deployment", namespace, name) for name in names]
    for target, status in Waiter(kube).wait(items, timeout).items():
        console.line(f"{target.describe()} ({namespace}): {status.message}")
