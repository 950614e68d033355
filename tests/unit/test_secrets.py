"""Secrets resolution with injected readers: where each value comes from, what a volume pins,
and that every credential arrives byte-exact in every URL and file it lands in."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import unquote, urlsplit

import bcrypt
import pytest

from k3stack import secrets as sec
from k3stack import settings

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
NASTY = "p@ss:w/rd?#%[]$ {x}\"'\\"


def load(**given):
    return settings.load(env_dir=Path("/nonexistent"), environ={**BASE, **given})


def data(stack: sec.StackSecrets, name: str) -> dict[str, str]:
    obj = next(m.obj for m in stack.objects if m.name == name)
    return {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}


def cluster(secrets: dict[tuple[str, str], dict[str, str]]):
    return lambda namespace, name: secrets.get((namespace, name))


def test_generated_once_then_found_in_the_cluster():
    first = sec.resolve(load(), cluster({}))
    assert set(first.origins.values()) == {"generated"}
    assert all(len(first.values[k]) >= 32 for k in sec.LOCATIONS)
    stored = {(m.namespace, m.name): data(first, m.name) for m in first.objects}
    again = sec.resolve(load(), cluster(stored))
    assert set(again.origins.values()) == {"cluster"}
    assert [m.obj for m in again.objects] == [m.obj for m in first.objects]  # a re-run changes nothing


def test_a_setting_wins_over_the_cluster_unless_a_volume_pins_it():
    stored = {("llm-stack", "redis"): {"REDIS_PASSWORD": "old-redis-password"}}
    resolved = sec.resolve(load(REDIS_PASSWORD="new-redis-password"), cluster(stored))
    assert (resolved.values["REDIS_PASSWORD"], resolved.origins["REDIS_PASSWORD"]) == ("new-redis-password", "settings")
    pinned = {("llm-stack", "postgres"): {"POSTGRES_PASSWORD": "old-database-password"}}
    with pytest.raises(sec.SecretsError, match=r"POSTGRES_PASSWORD: differs from the password the existing database"):
        sec.resolve(load(POSTGRES_PASSWORD="new-database-password"), cluster(pinned))


@pytest.mark.parametrize(("setting", "volume"), [("POSTGRES_PASSWORD", "postgres-data"),
                                                 ("WEBUI_ADMIN_PASSWORD", "open-webui-data")])  # fmt: skip
def test_a_lost_secret_is_never_regenerated_while_its_volume_stays(setting, volume):
    volumes = {("llm-stack", volume)}
    with pytest.raises(sec.SecretsError) as error:
        sec.resolve(load(), cluster({}), lambda ns, name: (ns, name) in volumes)
    assert str(error.value).startswith(f"{setting}: Secret llm-stack/")
    assert f"volume {volume} stays" in str(error.value)
    assert error.value.hint  # says how to put it back
    # Given explicitly, the person vouches for it: accepted.
    others = {"POSTGRES_PASSWORD": "a-known-old-password", "WEBUI_ADMIN_PASSWORD": "a-known-admin-password"}
    resolved = sec.resolve(load(**others), cluster({}), lambda ns, name: True)
    assert resolved.origins[setting] == "settings"


def test_without_volumes_a_lost_secret_is_generated_afresh():
    resolved = sec.resolve(load(), cluster({}), lambda ns, name: False)
    assert resolved.origins["POSTGRES_PASSWORD"] == "generated"


def test_every_credential_arrives_byte_exact_in_every_url():
    resolved = sec.resolve(load(POSTGRES_PASSWORD=NASTY + "pg", REDIS_PASSWORD=NASTY + "redis"), cluster({}))
    webui = data(resolved, "open-webui")
    database = urlsplit(webui["DATABASE_URL"])
    assert (unquote(database.password), database.hostname, database.port) == (
        NASTY + "pg",
        "postgres.llm-stack.svc",
        5432,
    )
    assert unquote(database.username) == load()["POSTGRES_USER"]
    redis = urlsplit(webui["REDIS_URL"])
    assert (unquote(redis.password), redis.hostname, redis.port, redis.path) == (
        NASTY + "redis",
        "redis.llm-stack.svc",
        6379,
        "/0",
    )
    assert data(resolved, "postgres")["POSTGRES_PASSWORD"] == NASTY + "pg"
    assert data(resolved, "redis")["REDIS_PASSWORD"] == NASTY + "redis"


def test_redis_conf_quotes_by_redis_rules():
    assert sec.redis_quote('a"b\\c d') == '"a\\"b\\\\c d"'
    assert sec.redis_quote("x\ny") == '"x\\x0ay"'  # a newline cannot start a new directive
    assert sec.redis_quote("é") == '"\\xc3\\xa9"'
    conf = sec.redis_conf('p"w')
    assert conf.splitlines()[1:] == ['requirepass "p\\"w"', "appendonly yes"]


def test_the_htpasswd_line_is_kept_only_while_it_still_matches():
    first = sec.resolve(load(NETDATA_PASSWORD="netdata-password-1"), cluster({}))
    line = data(first, "netdata-basic-auth")["users"]
    user, digest = line.split(":")
    assert bcrypt.checkpw(b"netdata-password-1", digest.encode())
    stored = {("monitoring", "netdata-basic-auth"): {"users": line, "password": "netdata-password-1"}}
    same = sec.resolve(load(NETDATA_PASSWORD="netdata-password-1"), cluster(stored))
    assert data(same, "netdata-basic-auth")["users"] == line  # no new salt: a true no-op
    changed = sec.resolve(load(NETDATA_PASSWORD="netdata-password-2"), cluster(stored))
    new_user, new_digest = data(changed, "netdata-basic-auth")["users"].split(":")
    assert new_user == user
    assert bcrypt.checkpw(b"netdata-password-2", new_digest.encode())


def test_a_changed_secret_changes_the_checksum_that_rolls_the_pods():
    one = sec.resolve(load(REDIS_PASSWORD="redis-password-one"), cluster({}))
    two = sec.resolve(load(REDIS_PASSWORD="redis-password-two"), cluster({}))
    assert one.checksums["REDIS_SECRET_CHECKSUM"] != two.checksums["REDIS_SECRET_CHECKSUM"]
    assert one.checksums["OPEN_WEBUI_SECRET_CHECKSUM"] != two.checksums["OPEN_WEBUI_SECRET_CHECKSUM"]  # REDIS_URL


def test_the_netdata_stream_key_is_a_generated_guid_kept_in_its_secret():
    import uuid

    first = sec.resolve(load(), cluster({}))
    key = first.values["NETDATA_STREAM_API_KEY"]
    assert str(uuid.UUID(key)) == key
    assert first.origins["NETDATA_STREAM_API_KEY"] == "generated"
    stream = data(first, "netdata-stream")
    assert stream["api-key"] == key
    # the parent accepts this key only; children send with it to the chart's Service
    assert stream["parent-stream.conf"].splitlines()[1:] == [f"[{key}]", "    enabled = yes", "    allow from = *"]
    assert stream["child-stream.conf"].splitlines()[1:] == [
        "[stream]",
        "    enabled = yes",
        "    destination = netdata:19999",
        f"    api key = {key}",
    ]
    assert "11111111-2222-3333-4444-555555555555" not in str(stream)  # the chart's published default
    stored = {(m.namespace, m.name): data(first, m.name) for m in first.objects}
    again = sec.resolve(load(), cluster(stored))
    assert again.values["NETDATA_STREAM_API_KEY"] == key
    assert again.checksums["NETDATA_STREAM_CHECKSUM"] == first.checksums["NETDATA_STREAM_CHECKSUM"]
    other = sec.resolve(load(), cluster({}))
    assert other.checksums["NETDATA_STREAM_CHECKSUM"] != first.checksums["NETDATA_STREAM_CHECKSUM"]  # pods roll
    # never a setting: not read from the environment, not exported with the settings' secrets
    assert "NETDATA_STREAM_API_KEY" not in sec.LOCATIONS


def test_a_stream_key_that_is_not_a_guid_is_refused_with_the_fix():
    first = sec.resolve(load(), cluster({}))
    stored = {(m.namespace, m.name): data(first, m.name) for m in first.objects}
    stored[("monitoring", "netdata-stream")] = {"api-key": "x\n[stream]\n    enabled = no"}
    with pytest.raises(sec.SecretsError) as caught:
        sec.resolve(load(), cluster(stored))
    assert "not a GUID" in caught.value.what
    assert "delete secret netdata-stream" in caught.value.hint
    assert "enabled = no" not in str(caught.value)


def test_a_secret_from_the_api_is_decoded_to_text():
    assert sec.decode({"data": {"a": "czNjcmV0", "b": base64.b64encode("pässwörd".encode()).decode()}}) == {
        "a": "s3cret",
        "b": "pässwörd",
    }
    assert sec.decode({"data": None}) == {}
    assert sec.decode({}) == {}


def test_the_checksum_is_16_hex_digits_of_every_key_and_value_in_key_order():
    import hashlib

    assert sec._checksum({"b": "2", "a": "1"}) == hashlib.sha256(b"a\x001\x00b\x002\x00").hexdigest()[:16]
    assert len(sec._checksum({})) == 16


def test_a_lost_secret_says_how_to_put_it_back():
    with pytest.raises(sec.SecretsError) as error:
        sec.resolve(load(), cluster({}), lambda ns, name: name == "postgres-data")
    assert error.value.hint == (
        "put the Secret back (from a k3stack backup, or `kubectl apply -f` a saved copy), or set POSTGRES_PASSWORD "
        "to the password the volume was initialised with"
    )
