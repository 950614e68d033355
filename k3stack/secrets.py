"""The stack's Secret objects. Each secret value comes from the settings when given, else from
the Secret already in the cluster, else it is generated once (and then found in the cluster on
every later run). A password a volume already depends on is never changed behind its back."""

from __future__ import annotations

import base64
import hashlib
import secrets as random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import bcrypt

from .errors import K3stackError
from .manifests import MANAGED_BY, MANAGER, SOURCE_ANNOTATION, Manifest
from .settings import Settings

# setting -> (namespace setting, Secret name, key) where the value is kept in the cluster
LOCATIONS: dict[str, tuple[str, str, str]] = {
    "POSTGRES_PASSWORD": ("STACK_NAMESPACE", "postgres", "POSTGRES_PASSWORD"),
    "REDIS_PASSWORD": ("STACK_NAMESPACE", "redis", "REDIS_PASSWORD"),
    "WEBUI_SECRET_KEY": ("STACK_NAMESPACE", "open-webui", "WEBUI_SECRET_KEY"),
    "WEBUI_ADMIN_PASSWORD": ("STACK_NAMESPACE", "open-webui", "WEBUI_ADMIN_PASSWORD"),
    "NETDATA_PASSWORD": ("MONITORING_NAMESPACE", "netdata-basic-auth", "password"),
}
# Kept like LOCATIONS (the cluster's Secret first, else generated once), but not a setting: nobody has
# to choose it, so it is never read from the settings, exported or restored (a restored stack gets a
# new one and Netdata's pods roll with it). NETDATA_STREAM_API_KEY is the key Netdata's children and
# k8s-state stream to the parent with (stream.conf, mounted from the Secret by k8s/monitoring/
# netdata.yaml), instead of the key the chart publishes as its default.
KEPT: dict[str, tuple[str, str, str]] = {
    "NETDATA_STREAM_API_KEY": ("MONITORING_NAMESPACE", "netdata-stream", "api-key"),
}
# How a value is generated when neither the settings nor the cluster have one (default: 32 random
# bytes, URL-safe). Netdata takes only a GUID as a stream API key ("uuidgen", its stream.conf says).
GENERATE: dict[str, Callable[[], str]] = {"NETDATA_STREAM_API_KEY": lambda: str(uuid.uuid4())}
# Changing these would break what a volume already holds: PostgreSQL applies the password only
# when it initialises an empty data directory, Open WebUI creates the admin from
# WEBUI_ADMIN_PASSWORD only while its database has no user (later values are ignored and the old
# password still signs in). setting -> (volume, what applies it, how to change it for real)
PINNED_BY_VOLUME = {
    "POSTGRES_PASSWORD": (
        "postgres-data",
        "the password the existing database was initialised with",
        "PostgreSQL applies it only to an empty volume",
        "change it inside PostgreSQL first (ALTER USER ... PASSWORD) and then set it here",
    ),
    "WEBUI_ADMIN_PASSWORD": (
        "open-webui-data",
        "the admin password of the existing Open WebUI",
        "Open WebUI applies it only while its database has no user",
        "change it in Open WebUI first (Settings > Account), then in the Secret "
        "(kubectl -n NAMESPACE edit secret open-webui) and here",
    ),
}

ReadSecret = Callable[[str, str], dict[str, str] | None]  # (namespace, name) -> decoded data or None
VolumeExists = Callable[[str, str], bool]  # (namespace, PVC name) -> whether the claim exists


class SecretsError(K3stackError, ValueError):
    """A secret cannot be used as given (e.g. it differs from what a volume was initialised with)."""


@dataclass(frozen=True)
class StackSecrets:
    """The stack's secrets resolved: the Secret objects to apply, every value (for redaction),
    where each came from, and the checksums that roll pods when a Secret changes."""

    objects: list[Manifest]
    values: dict[str, str]  # every secret value (for redaction and `inv credentials`)
    origins: dict[str, str]  # setting -> "settings" | "cluster" | "generated"
    checksums: dict[str, str]  # render variables that roll pods when a Secret changes


def decode(secret: dict) -> dict[str, str]:
    """A Secret object's `data` (base64, as the API returns it) as text values; {} when empty."""
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _checksum(data: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(f"{key}\0{data[key]}\0".encode())
    return digest.hexdigest()[:16]


def resolve(settings: Settings, read: ReadSecret, volume_exists: VolumeExists = lambda ns, name: False) -> StackSecrets:
    """Build the Secret objects. `read` returns a Secret's decoded data from the cluster (or None);
    `volume_exists` whether a PVC is there. Raises SecretsError when a setting differs from what a
    volume holds, or when the Secret of a volume's password is gone while the volume stays (a new
    password would lock the data out: PINNED_BY_VOLUME)."""
    cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def existing(setting: str) -> str | None:
        ns_setting, name, key = {**LOCATIONS, **KEPT}[setting]
        where = (settings[ns_setting], name)
        if where not in cache:
            cache[where] = read(*where)
        return (cache[where] or {}).get(key)

    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for setting in [*LOCATIONS, *KEPT]:
        given = settings.secrets.get(setting) if setting in LOCATIONS else None
        current = existing(setting)
        if given is not None:
            if current is not None and given != current and setting in PINNED_BY_VOLUME:
                ns_setting, name, _ = LOCATIONS[setting]
                volume, what, why, how = PINNED_BY_VOLUME[setting]
                raise SecretsError(
                    f"{setting}: differs from {what} (Secret {settings[ns_setting]}/{name}); {why} ({volume}). "
                    f"Fix: unset {setting} to keep the current one, or {how}"
                )
            values[setting], origins[setting] = given, "settings"
        elif current is not None:
            values[setting], origins[setting] = current, "cluster"
        elif setting in PINNED_BY_VOLUME and volume_exists(
            settings[LOCATIONS[setting][0]], PINNED_BY_VOLUME[setting][0]
        ):
            ns_setting, name, _ = LOCATIONS[setting]
            volume, what, why, _how = PINNED_BY_VOLUME[setting]
            raise SecretsError(
                f"{setting}: Secret {settings[ns_setting]}/{name} is gone but volume {volume} stays, holding "
                f"{what}; a new one would not match ({why})",
                f"put the Secret back (from a k3stack backup, or `kubectl apply -f` a saved copy), or set {setting} "
                "to the password the volume was initialised with",
            )
        else:
            values[setting] = GENERATE.get(setting, lambda: random.token_urlsafe(32))()
            origins[setting] = "generated"

    stack, monitoring = settings["STACK_NAMESPACE"], settings["MONITORING_NAMESPACE"]
    pg_user, pg_db = settings["POSTGRES_USER"], settings["POSTGRES_DB"]
    redis_url = f"redis://:{quote(values['REDIS_PASSWORD'], safe='')}@redis.{stack}.svc:6379/0"
    webui = {
        "DATABASE_URL": f"postgresql://{pg_user}:{quote(values['POSTGRES_PASSWORD'], safe='')}"
        f"@postgres.{stack}.svc:5432/{pg_db}",
        "REDIS_URL": redis_url,
        "WEBUI_SECRET_KEY": values["WEBUI_SECRET_KEY"],
        "WEBUI_ADMIN_EMAIL": settings["WEBUI_ADMIN_EMAIL"],
        "WEBUI_ADMIN_PASSWORD": values["WEBUI_ADMIN_PASSWORD"],
    }
    user = settings["NETDATA_USER"]
    netdata = {
        "users": _htpasswd(
            user, values["NETDATA_PASSWORD"], (cache.get((monitoring, "netdata-basic-auth")) or {}).get("users")
        ),
        "password": values["NETDATA_PASSWORD"],
    }
    redis = {"REDIS_PASSWORD": values["REDIS_PASSWORD"], "redis.conf": redis_conf(values["REDIS_PASSWORD"])}
    stream = netdata_stream(values["NETDATA_STREAM_API_KEY"])
    datas = {
        (stack, "postgres"): {"POSTGRES_PASSWORD": values["POSTGRES_PASSWORD"]},
        (stack, "redis"): redis,
        (stack, "open-webui"): webui,
        (monitoring, "netdata-basic-auth"): netdata,
        (monitoring, "netdata-stream"): stream,
    }
    objects = [_secret(ns, name, data) for (ns, name), data in datas.items()]
    values = {**values, "DATABASE_URL": webui["DATABASE_URL"], "REDIS_URL": redis_url}
    return StackSecrets(
        objects=objects,
        values=values,
        origins=origins,
        checksums={
            "OPEN_WEBUI_SECRET_CHECKSUM": _checksum(webui),
            "REDIS_SECRET_CHECKSUM": _checksum(datas[(stack, "redis")]),
            "NETDATA_STREAM_CHECKSUM": _checksum(stream),
        },
    )


def redis_quote(value: str) -> str:
    """One argument of a redis.conf line, by redis' own rules (sdssplitargs): double quotes, with
    `\\` and `\"` escaped and every byte outside printable ASCII as \\xHH. A space, quote or
    newline in a password can then neither break the file nor add a directive to it."""
    out = []
    for byte in value.encode():
        if byte in b'"\\':
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def redis_conf(password: str) -> str:
    """The redis.conf redis-server loads (mounted from the Secret `redis`; k8s/llm-stack/redis.yaml)."""
    return f"# rendered by k3stack (k3stack/secrets.py)\nrequirepass {redis_quote(password)}\nappendonly yes\n"


def netdata_stream(api_key: str) -> dict[str, str]:
    """The Secret `netdata-stream`: the key, and the two stream.conf files Netdata reads it from — the
    parent's accepts streams with this key only; children and k8s-state send with it to the parent's
    Service (`netdata`, the chart's, on 19999). A key that is not a GUID is refused: Netdata would
    reject every stream with it, and nothing else may reach a config line."""
    try:
        key = str(uuid.UUID(api_key))
    except ValueError:
        raise SecretsError(
            "Secret netdata-stream: api-key is not a GUID (Netdata accepts only GUIDs as stream API keys)",
            "delete the Secret (kubectl -n MONITORING_NAMESPACE delete secret netdata-stream) and deploy again: a "
            "new key is generated and Netdata's pods roll with it",
        ) from None
    header = "# rendered by k3stack (k3stack/secrets.py); the API key is generated once and kept here\n"
    return {
        "api-key": key,
        "parent-stream.conf": f"{header}[{key}]\n    enabled = yes\n    allow from = *\n",
        "child-stream.conf": (
            f"{header}[stream]\n    enabled = yes\n    destination = netdata:19999\n    api key = {key}\n"
        ),
    }


def _htpasswd(user: str, password: str, current: str | None) -> str:
    """Traefik basicAuth `users` line. bcrypt salts every hash: keep the current line while it
    still matches, so an unchanged password does not rewrite the Secret on every deploy."""
    if current and current.count(":") == 1:
        current_user, current_hash = current.strip().split(":")
        if current_user == user and bcrypt.checkpw(password.encode(), current_hash.encode()):
            return current.strip()
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()}"


def _secret(namespace: str, name: str, data: dict[str, str]) -> Manifest:
    annotations = {SOURCE_ANNOTATION: "k3stack/secrets.py"}
    obj = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}, "annotations": annotations},
        "type": "Opaque",
        # `data` (base64), not stringData: an unchanged re-apply is then a true no-op.
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())},
    }
    return Manifest(obj, "k3stack/secrets.py")
