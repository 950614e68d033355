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


# -- what `inv mutate` showed unguarded (#19) ---------------------------------------------------------
def test_every_secret_object_is_opaque_stamped_and_base64_in_key_order():
    """The exact object: type Opaque (immutable in the API: another type fails every later apply),
    the managed-by label and source annotation every k3stack object carries, data as base64."""
    resolved = sec.resolve(load(POSTGRES_PASSWORD="a-database-password"), cluster({}))
    [postgres] = [m for m in resolved.objects if m.name == "postgres"]
    assert postgres.source == "k3stack/secrets.py"
    assert postgres.obj == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "postgres",
            "namespace": "llm-stack",
            "labels": {"app.kubernetes.io/managed-by": "k3stack"},
            "annotations": {"k3stack.dev/source": "k3stack/secrets.py"},
        },
        "type": "Opaque",
        "data": {"POSTGRES_PASSWORD": base64.b64encode(b"a-database-password").decode()},
    }
    for m in resolved.objects:
        assert (m.source, m.obj["type"], list(m.obj["data"])) == ("k3stack/secrets.py", "Opaque", sorted(m.obj["data"]))


def test_open_webuis_secret_holds_exactly_the_keys_its_deployment_reads():
    """k8s/llm-stack/open-webui.yaml reads these keys by name (secretKeyRef and the key file): a
    renamed key is a pod that never starts (CreateContainerConfigError)."""
    given = {"WEBUI_SECRET_KEY": "a-session-signing-key", "WEBUI_ADMIN_PASSWORD": "an-admin-password"}
    resolved = sec.resolve(load(**given), cluster({}))
    webui = data(resolved, "open-webui")
    assert sorted(webui) == [
        "DATABASE_URL",
        "REDIS_URL",
        "WEBUI_ADMIN_EMAIL",
        "WEBUI_ADMIN_PASSWORD",
        "WEBUI_SECRET_KEY",
    ]
    assert webui["WEBUI_ADMIN_EMAIL"] == "admin@203.0.113.10.sslip.io"
    assert (webui["WEBUI_SECRET_KEY"], webui["WEBUI_ADMIN_PASSWORD"]) == tuple(given.values())


def test_every_key_a_manifest_reads_from_a_secret_is_in_that_secret():
    from k3stack import deploy

    loaded = load()
    plan = deploy.make_plan(loaded, lambda namespace, name: None)
    secrets = {(m.namespace, m.name): set(m.obj.get("data") or {}) for m in plan.manifests if m.kind == "Secret"}
    wanted = set()
    for m in plan.manifests:
        for node in _walk(m.obj):
            ref = node.get("secretKeyRef")
            if ref:
                wanted.add((m.namespace, ref["name"], ref["key"]))
            secret = node.get("secret")
            if isinstance(secret, dict) and "secretName" in secret:
                wanted |= {(m.namespace, secret["secretName"], item["key"]) for item in secret.get("items") or []}
    assert len(wanted) >= 8
    missing = sorted(w for w in wanted if w[2] not in secrets.get(w[:2], set()))
    assert not missing, f"keys read from Secrets that k3stack/secrets.py does not write: {missing}"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_a_generated_secret_is_32_random_bytes_url_safe():
    resolved = sec.resolve(load(), cluster({}))
    for name in sec.LOCATIONS:
        value = resolved.values[name]
        assert len(value) == 43, (name, value)  # base64url of 32 bytes, unpadded
        assert len(base64.urlsafe_b64decode(value + "=")) == 32


def test_a_kept_value_is_never_taken_from_the_settings():
    """NETDATA_STREAM_API_KEY is no setting: even a Settings carrying it (no loader makes one) does
    not choose it; the cluster's Secret or a fresh GUID does."""
    import dataclasses

    loaded = load()
    forged = dataclasses.replace(loaded, secrets={**loaded.secrets, "NETDATA_STREAM_API_KEY": "not-a-guid-at-all"})
    resolved = sec.resolve(forged, cluster({}))
    assert resolved.origins["NETDATA_STREAM_API_KEY"] == "generated"
    assert resolved.values["NETDATA_STREAM_API_KEY"] != "not-a-guid-at-all"


def test_redis_quote_passes_printable_ascii_and_escapes_every_other_byte():
    printable = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
    assert sec.redis_quote(printable) == f'"{printable}"'  # letters (X included), digits, punctuation as is
    assert sec.redis_quote("\x7f\x1f\t") == '"\\x7f\\x1f\\x09"'  # DEL and control characters as \xHH


def test_the_htpasswd_line_uses_bcrypt_cost_10():
    """Traefik checks the hash on every request to the dashboard: the cost is part of the design
    (10: about 50 ms; each step up doubles it)."""
    resolved = sec.resolve(load(NETDATA_PASSWORD="netdata-password-1"), cluster({}))
    user, digest = data(resolved, "netdata-basic-auth")["users"].split(":")
    assert (user, digest[:7]) == ("admin", "$2b$10$")


def test_the_stream_conf_files_are_exactly_these():
    key = "0f8fad5b-d9cb-469f-a165-70867728950e"
    header = "# rendered by k3stack (k3stack/secrets.py); the API key is generated once and kept here"
    stream = sec.netdata_stream(key.upper())  # a GUID in any case is written as Netdata prints it
    assert stream == {
        "api-key": key,
        "parent-stream.conf": f"{header}\n[{key}]\n    enabled = yes\n    allow from = *\n",
        "child-stream.conf": (
            f"{header}\n[stream]\n    enabled = yes\n    destination = netdata:19999\n    api key = {key}\n"
        ),
    }


def test_a_stream_key_that_is_not_a_guid_says_what_and_how_exactly():
    with pytest.raises(sec.SecretsError) as caught:
        sec.netdata_stream("x")
    assert caught.value.what == (
        "Secret netdata-stream: api-key is not a GUID (Netdata accepts only GUIDs as stream API keys)"
    )
    assert caught.value.hint == (
        "delete the Secret (kubectl -n MONITORING_NAMESPACE delete secret netdata-stream) and deploy again: a "
        "new key is generated and Netdata's pods roll with it"
    )


def test_the_urls_are_among_the_values_that_output_redacts():
    """`values` feeds the console's redaction: a URL holds the password percent-encoded, a form the
    password itself does not match, so the URLs are values of their own, as the Secret holds them."""
    resolved = sec.resolve(load(POSTGRES_PASSWORD=NASTY + "pg", REDIS_PASSWORD=NASTY + "redis"), cluster({}))
    webui = data(resolved, "open-webui")
    assert resolved.values["DATABASE_URL"] == webui["DATABASE_URL"]
    assert resolved.values["REDIS_URL"] == webui["REDIS_URL"]
    assert sorted(resolved.values) == sorted([*sec.LOCATIONS, *sec.KEPT, "DATABASE_URL", "REDIS_URL"])
