"""Generated inputs (hypothesis) for every setting (issue #15).

Arbitrary text — any Unicode code point (lone surrogates too: an undecodable byte in the
environment arrives as one), quotes, `$`, `${NAME}`, `%`, `#`, `\\`, blanks, newlines, NUL, very
long — given to any setting, from the environment or from an env file, either

- is taken: `settings.load` keeps it exactly (a secret byte for byte; a plain setting without its
  surrounding blanks) and it arrives exactly where it lands: in the Secret's data, inside
  DATABASE_URL / REDIS_URL after URL-decoding, in redis.conf after redis' own argument parsing, in
  the htpasswd line after bcrypt's check, in every k8s/ field that refers to it (inside chart
  values after parsing them as YAML), in K3s's config file after parsing it as YAML; or
- is refused with one SettingsError whose every problem names the setting (and never shows a secret).

Never another exception. CI runs a fixed seed (derandomize) with a small budget; for a longer,
randomised run: `HYPOTHESIS_PROFILE=long python -m pytest tests/unit/test_properties.py`.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path
from unittest import mock
from urllib.parse import unquote, urlsplit

import bcrypt
import pytest
import yaml
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from k3stack import manifests as mf
from k3stack import reader, settings
from k3stack import secrets as sec
from k3stack.settings import SettingsError

hsettings.register_profile(
    "ci",
    derandomize=True,  # a fixed seed: the same examples on every run and machine
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hsettings.register_profile(
    "long", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
PROFILE = hsettings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
REF = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
TRICKY = [
    *"$}%#\\'\" \n\r\t\x00:=,@/.-aZ09é😀\u2028\ufeff\udcff",
    "${",
    "${DOMAIN}",
    "${NOPE}",
    "%2F",
    "\\n",
    "export ",
    "# ",
    "' #",
]
ANY_CHARACTER = st.characters(exclude_categories=())  # every code point, surrogates included
TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=40),
    st.lists(st.sampled_from(TRICKY), max_size=24).map("".join),
    st.tuples(st.text(ANY_CHARACTER, min_size=1, max_size=4), st.integers(16, 4000)).map(lambda t: t[0] * t[1]),
)
# Always tried as well, whatever the seed: the edges the checks are about.
EDGES = [
    "",
    "   ",
    "${DOMAIN}",
    "undecodable-\udcff-byte",  # an undecodable byte in the environment
    "nul-\x00-in-the-middle",
    "é" * 37,  # 74 bytes: over bcrypt's 72
    "p" * 73,
    " spaced secret value ",
    "'\"$%#\\ \n${x}",
]


def with_edges(test):
    """`test` run on every EDGES value too (hypothesis @example), besides the generated ones."""
    for value in EDGES:
        test = example(value=value)(test)
    return test


def values_for(setting: settings.Setting) -> st.SearchStrategy[str]:
    """Any text, and any text around the setting's default (so checks are probed near a valid value)."""
    default = setting.default or ""
    return st.one_of(TEXT, TEXT.map(lambda x: default + x), TEXT.map(lambda x: x + default))


def dotenv_quoted(value: str) -> str:
    """`value` as a single-quoted python-dotenv value (its parser unescapes \\\\ and \\' there)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_with(name: str, value: str, via: str, env_dir: Path) -> settings.Settings:
    if via == "environ":
        return settings.load(env_dir=env_dir, environ={**BASE, name: value})
    path = env_dir / "prop.env"
    path.write_text(f"{name}={dotenv_quoted(value)}\n", encoding="utf-8")
    path.chmod(0o600)
    return settings.load("prop", env_dir=env_dir, environ={k: v for k, v in BASE.items() if k != name})


def assert_refused_by_name(error: SettingsError, name: str, value: str) -> None:
    assert error.problems
    for problem in error.problems:
        assert name in problem, problem
        assert "\n" not in problem
    if settings.BY_NAME[name].secret and len(value.strip()) >= 6:
        assert value not in str(error)


def taken(name: str, value: str, env_dir: Path, via: str = "environ") -> settings.Settings | None:
    """The settings with `name` set to `value`, or None when they were refused as they must be
    (one SettingsError whose every problem names the setting)."""
    try:
        return load_with(name, value, via, env_dir)
    except SettingsError as error:
        assert_refused_by_name(error, name, value)
        return None


@pytest.mark.parametrize("name", [s.name for s in settings.SETTINGS])
def test_any_text_for_any_setting_is_taken_exactly_or_refused_by_name(tmp_path, name):
    setting = settings.BY_NAME[name]

    @PROFILE
    @given(value=values_for(setting), via=st.sampled_from(["environ", "file"]))
    @example(value="undecodable-\udcff-byte", via="environ")
    @example(value="nul-\x00-in-the-middle", via="file")
    @example(value="é" * 37, via="file")
    @example(value=" spaced secret value ", via="file")
    @example(value="'\"$%#\\ \n${x}", via="file")
    def check(value, via):
        if via == "file" and re.search(r"[\ud800-\udfff]", value):
            via = "environ"  # an env file is UTF-8 text: a lone surrogate cannot be written to one
        loaded = taken(name, value, tmp_path, via)
        if loaded is None:
            return
        kept = loaded.secrets.get(name) if setting.secret else loaded[name]
        if not value.strip():
            assert kept == (None if setting.secret else loaded[name])  # unset: the default (or generated)
        elif setting.secret:
            assert kept == value  # byte for byte, blanks and ${...} included
        elif not REF.search(value):
            assert kept == value.strip()

    check()


# -- where rendered values land ------------------------------------------------------------------
SOURCES = {str(p.relative_to(mf.K8S_DIR)): p.read_text() for p in mf.manifest_files()}
TEMPLATES = {
    source: list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    for source, text in SOURCES.items()
}
RENDERED_SETTINGS = sorted({ref for text in SOURCES.values() for ref in REF.findall(text) if ref in settings.BY_NAME})
# What k3stack computes for the templates (Secret checksums that roll pods): any value will do here.
CHECKSUMS = {ref: "0" * 16 for text in SOURCES.values() for ref in REF.findall(text) if ref not in settings.BY_NAME}
EMBEDDED_YAML = "valuesContent"  # HelmChart fields holding chart values: YAML inside a string
RETYPED: list[tuple[str, str, object]] = []  # (source, path, value) where a plain ${VAR} lost its string type


def only_files_with(name: str, root: Path) -> Path:
    """A k8s/ copy holding only the templates that refer to ${name} (rendering those is what counts)."""
    for source, text in SOURCES.items():
        if f"${{{name}}}" in text:
            (root / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(mf.K8S_DIR / source, root / source)
    return root


class _FastLoader(reader.SafeLoader):
    """libyaml's loader with PyYAML's node styles, as k3stack.reader gives them to a transform."""

    def get_node(self):
        node = super().get_node()
        if node is not None:
            reader.plain_style_as_none(node)
        return node


def fast_yaml():
    """manifests.py parsing with libyaml, as through k3stack.reader (the report's manifests.py patch
    moves it there): the same nodes, documents and marks, ten times faster."""
    return mock.patch.object(mf.yaml, "SafeLoader", _FastLoader)


def assert_landed(template, rendered, variables: dict[str, str], where: str) -> None:
    """Every scalar of `template` that refers to ${VARS} is, in `rendered`, exactly the scalar with
    the variables put in; chart values (YAML in a string) are compared after parsing both."""
    if isinstance(template, dict):
        assert isinstance(rendered, dict), where
        for key, value in template.items():
            assert key in rendered, f"{where}.{key} missing"
            if key == EMBEDDED_YAML and isinstance(value, str):
                assert_landed(yaml.safe_load(value), yaml.safe_load(rendered[key]), variables, f"{where}.{key}(parsed)")
            assert_landed(value, rendered[key], variables, f"{where}.{key}")
    elif isinstance(template, list):
        assert isinstance(rendered, list), where
        assert len(template) == len(rendered), where
        for index, (t, r) in enumerate(zip(template, rendered, strict=True)):
            assert_landed(t, r, variables, f"{where}[{index}]")
    elif isinstance(template, str) and REF.search(template):
        expected = REF.sub(lambda m: variables[m.group(1)], template)
        if isinstance(rendered, str):
            assert rendered == expected, where
        else:  # a plain `${VAR}` is typed like the YAML it stands for (k8s/ quotes every string one)
            assert REF.fullmatch(template), where
            assert yaml.safe_load(expected) == rendered, where
            RETYPED.append((where, template, rendered))


def rendered_by_source(manifests: list[mf.Manifest]) -> dict[tuple[str, str, int], dict]:
    """(source, kind, index among that kind in the file) -> object: template documents pair with it."""
    seen: dict[tuple[str, str], int] = {}
    out = {}
    for m in sorted(manifests, key=lambda m: m.source):  # stable: a file's documents keep their order
        key = (m.source, m.kind)
        out[(*key, seen.get(key, 0))] = m.obj
        seen[key] = seen.get(key, 0) + 1
    return out


@pytest.mark.parametrize("name", RENDERED_SETTINGS)
def test_a_rendered_setting_arrives_exactly_where_k8s_refers_to_it(tmp_path, name):
    k8s = only_files_with(name, tmp_path / "k8s")
    setting = settings.BY_NAME[name]

    @PROFILE
    @with_edges
    @given(value=values_for(setting))
    def check(value):
        loaded = taken(name, value, tmp_path)
        if loaded is None:
            return
        variables = {**loaded.render_vars(), **CHECKSUMS}
        with fast_yaml():
            objects = rendered_by_source(mf.render(variables, k8s_dir=k8s))
        for source in sorted(str(p.relative_to(k8s)) for p in mf.manifest_files(k8s)):
            seen: dict[str, int] = {}
            for doc in TEMPLATES[source]:
                index = seen.get(doc["kind"], 0)
                seen[doc["kind"]] = index + 1
                assert_landed(doc, objects[(source, doc["kind"], index)], variables, f"{source}:{doc['kind']}")

    check()


def fast_bcrypt():
    """bcrypt at its lowest cost: the hash is checked the same way, in a millisecond."""
    gensalt = bcrypt.gensalt
    return mock.patch.object(sec.bcrypt, "gensalt", lambda rounds=12, prefix=b"2b": gensalt(4, prefix))


def redis_unquote(argument: str) -> bytes:
    """One double-quoted argument of a redis.conf line by redis' own rules (sds.c sdssplitargs):
    \\xHH, \\n, \\r, \\t, \\b, \\a and \\<char> escapes."""
    assert argument[0] == argument[-1] == '"'
    out, body, i = bytearray(), argument[1:-1], 0
    simple = {"n": b"\n", "r": b"\r", "t": b"\t", "b": b"\b", "a": b"\a"}
    while i < len(body):
        c = body[i]
        if c == "\\" and body[i + 1] == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif c == "\\":
            out += simple.get(body[i + 1], body[i + 1].encode())
            i += 2
        else:
            assert c != '"', "an unescaped quote ends the argument early"
            out += c.encode()
            i += 1
    return bytes(out)


@pytest.mark.parametrize("name", sorted(sec.LOCATIONS))
def test_a_secret_arrives_byte_exact_in_every_place_it_is_used(tmp_path, name):
    @PROFILE
    @with_edges
    @given(value=values_for(settings.BY_NAME[name]))
    def check(value):
        loaded = taken(name, value, tmp_path)
        if loaded is None:
            return
        with fast_bcrypt():
            stack = sec.resolve(loaded, lambda namespace, secret: None)
        data = {
            (o.obj["metadata"]["name"], k): base64.b64decode(v) for o in stack.objects for k, v in o.obj["data"].items()
        }
        given = loaded.secrets.get(name)
        if given is None:
            assert stack.origins[name] == "generated"
            return
        _, secret_name, key = sec.LOCATIONS[name]
        assert data[(secret_name, key)] == given.encode()
        if name == "POSTGRES_PASSWORD":
            url = data[("open-webui", "DATABASE_URL")].decode()
            assert unquote(urlsplit(url).password, errors="strict") == given
            assert urlsplit(url).hostname == f"postgres.{loaded['STACK_NAMESPACE']}.svc"
        if name == "REDIS_PASSWORD":
            url = data[("open-webui", "REDIS_URL")].decode()
            assert unquote(urlsplit(url).password, errors="strict") == given
            assert urlsplit(url).port == 6379
            (line,) = [x for x in data[("redis", "redis.conf")].decode().splitlines() if x.startswith("requirepass")]
            assert redis_unquote(line.split(" ", 1)[1]) == given.encode()
        if name == "NETDATA_PASSWORD":
            user, _, hashed = data[("netdata-basic-auth", "users")].decode().partition(":")
            assert user == loaded["NETDATA_USER"]
            assert bcrypt.checkpw(given.encode(), hashed.encode())

    check()


# K3s's config file (bootstrap): the settings that go into it, parsed back as K3s parses it (YAML).
K3S_CONFIG = {
    "K3S_TOKEN": "token",
    "K3S_NODE_LABELS": "node-label",
    "K3S_NODE_TAINTS": "node-taint",
    "K3S_TLS_SAN": "tls-san",
    "K3S_DISABLE": "disable",
}


@pytest.mark.parametrize("name", sorted(K3S_CONFIG))
def test_a_k3s_setting_arrives_exactly_in_the_k3s_config_file(tmp_path, name):
    from k3stack.remote import k3s

    @PROFILE
    @with_edges
    @given(value=values_for(settings.BY_NAME[name]))
    def check(value):
        loaded = taken(name, value, tmp_path)
        if loaded is None:
            return
        token = loaded.secrets.get("K3S_TOKEN", "generated-token-value")
        for role in ("server", "agent"):
            config = yaml.safe_load(
                k3s.node_config(
                    role=role,
                    token=token,
                    first_server=None,
                    cluster_init=False,
                    node_name="n1",
                    tls_san=settings.split_list(loaded["K3S_TLS_SAN"]),
                    labels=settings.split_list(loaded["K3S_NODE_LABELS"]),
                    taints=settings.split_list(loaded["K3S_NODE_TAINTS"]),
                    disable=settings.split_list(loaded["K3S_DISABLE"]),
                )
            )
            assert config["token"] == token
            for setting, key in K3S_CONFIG.items():
                if setting != "K3S_TOKEN" and key in config:
                    assert config[key] == settings.split_list(loaded[setting])

    check()


@pytest.mark.parametrize(("name", "value"), [("POSTGRES_USER", "123"), ("WEBUI_ADMIN_NAME", "true")])
def test_a_plain_variable_stays_a_string(tmp_path, name, value):
    loaded = settings.load(env_dir=tmp_path, environ={**BASE, name: value})
    k8s = only_files_with(name, tmp_path / "k8s")
    rendered = mf.render({**loaded.render_vars(), **CHECKSUMS}, k8s_dir=k8s)
    env = [
        e
        for m in rendered
        if m.kind == "Deployment"
        for c in m.obj["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "value" in e
    ]
    assert all(isinstance(e["value"], str) for e in env), [e for e in env if not isinstance(e["value"], str)]
