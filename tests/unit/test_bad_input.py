"""Issue #15: every bad input gets one clear line (naming the setting or file, what is wrong and
the fix) before any host or the cluster is touched. Each input the issue lists, and more of the
same kinds, is a case here; `settings.load` is the first thing every task does, so a problem it
reports means nothing has changed anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k3stack import kubeconfig, reader, settings
from k3stack import manifests as mf
from k3stack.errors import K3stackError
from k3stack.settings import SettingsError

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}


def problems_of(**environ: str) -> list[str]:
    with pytest.raises(SettingsError) as err:
        settings.load(env_dir=Path("/nonexistent"), environ={**BASE, **environ})
    return err.value.problems


def loads(**environ: str) -> settings.Settings:
    return settings.load(env_dir=Path("/nonexistent"), environ={**BASE, **environ})


# (environ, the one problem expected: its exact start, and a fragment of the fix)
REFUSED = [
    # kind 3: checks that used to run after hosts changed
    (
        {"API_ENDPOINT": "https://10.0.0.2:6443"},
        "API_ENDPOINT='https://10.0.0.2:6443': expected host[:port] without a scheme",
        ": 10.0.0.2:6443 or 10.0.0.2",
    ),
    ({"API_ENDPOINT": "https://k8s.example.com/"}, "API_ENDPOINT=", "k8s.example.com:6443 or k8s.example.com"),
    ({"API_ENDPOINT": "10.0.0.2:6443/api"}, "API_ENDPOINT=", "10.0.0.2:6443 or 10.0.0.2"),
    ({"API_ENDPOINT": "10.0.0.2:99999"}, "API_ENDPOINT=", "host[:port]"),
    ({"API_ENDPOINT": "https://10.0.0.2:8443"}, "API_ENDPOINT=", ": 10.0.0.2:8443 or 10.0.0.2"),
    ({"API_ENDPOINT": "not an address"}, "API_ENDPOINT=", "e.g. 203.0.113.10:6443"),
    ({"K3S_NODE_LABELS": "garbage"}, "K3S_NODE_LABELS='garbage': expected Kubernetes labels", "has no ="),
    ({"K3S_NODE_LABELS": "tier=gpu,=x"}, "K3S_NODE_LABELS=", "key ''"),
    ({"K3S_NODE_LABELS": "tier=has space"}, "K3S_NODE_LABELS=", "value 'has space'"),
    ({"K3S_NODE_LABELS": "tier=" + "x" * 64}, "K3S_NODE_LABELS=", "at most 63"),
    ({"K3S_NODE_LABELS": "-tier=a"}, "K3S_NODE_LABELS=", "starting and ending alphanumeric"),
    ({"K3S_NODE_LABELS": "k" * 64 + "=a"}, "K3S_NODE_LABELS=", "the name must be 1-63"),
    ({"K3S_NODE_LABELS": "Example.COM/tier=a"}, "K3S_NODE_LABELS=", "lower-case DNS subdomain"),
    ({"K3S_NODE_LABELS": "kubernetes.io/role=gpu"}, "K3S_NODE_LABELS=", "kubelet refuses kubernetes.io"),
    ({"K3S_NODE_TAINTS": "gpu=true"}, "K3S_NODE_TAINTS='gpu=true': expected taints", "needs :Effect"),
    ({"K3S_NODE_TAINTS": "gpu=true:NoSchedul"}, "K3S_NODE_TAINTS=", "NoSchedule, PreferNoSchedule, NoExecute"),
    ({"K3S_NODE_TAINTS": "gpu=a b:NoSchedule"}, "K3S_NODE_TAINTS=", "value 'a b'"),
    ({"K3S_TLS_SAN": "https://k8s.example.com"}, "K3S_TLS_SAN=", "no scheme or port"),
    ({"K3S_TLS_SAN": "k8s.example.com:6443"}, "K3S_TLS_SAN=", "(not k8s.example.com:6443)"),
    (
        {"MONITOR_HOST": "chat.${DOMAIN}"},
        "MONITOR_HOST='chat.203.0.113.10.sslip.io': expected a name other than CHAT_HOST's",
        "monitor.${DOMAIN}",
    ),
    (  # the one moved onto the other's name is blamed, and its hint is not the value it already has
        {"CHAT_HOST": "monitor.${DOMAIN}"},
        "CHAT_HOST='monitor.203.0.113.10.sslip.io': expected a name other than MONITOR_HOST's",
        "CHAT_HOST=chat.${DOMAIN}",
    ),
    ({"OLLAMA_STORAGE": "0"}, "OLLAMA_STORAGE='0': expected a volume size above zero", "empty PersistentVolumeClaim"),
    ({"POSTGRES_STORAGE": "0Gi"}, "POSTGRES_STORAGE='0Gi': expected a volume size above zero", ""),
    ({"SERVERS": "a.example.com,root@a.example.com:2222,b.example.com"}, "SERVERS: a.example.com listed twice", ""),
    ({"SERVERS": "a.example.com", "AGENTS": "b.example.com,B.example.com"}, "AGENTS: b.example.com listed twice", ""),
    ({"SERVERS": "a.example.com", "AGENTS": "ubuntu@a.example.com"}, "AGENTS: a.example.com also in SERVERS", ""),
    ({"SERVERS": "[2001:db8::1]:22", "AGENTS": "2001:db8::1"}, "AGENTS: 2001:db8::1 also in SERVERS", ""),
    ({"SERVERS": "2001:DB8:0:0::1", "AGENTS": "root@[2001:db8::1]:22"}, "AGENTS: 2001:db8::1 also in SERVERS", ""),
    ({"SERVERS": "a.example.com,bad host\nx"}, "SERVERS='a.example.com,bad host\\nx': expected", "(not bad host\\nx)"),
    (
        {"K3S_INSTALL_URL": "http://get.k3s.io/"},
        "K3S_INSTALL_URL='http://get.k3s.io/': expected https:// instead of http://",
        "(https://get.k3s.io/)",
    ),
    ({"K3S_INSTALL_URL": "ftp://example.com/install.sh"}, "K3S_INSTALL_URL=", "file:/// for a local copy"),
    ({"NETDATA_CHART_REPO": "http://netdata.github.io/helmchart/"}, "NETDATA_CHART_REPO=", "https:// instead of"),
    (
        {"OLLAMA_MEMORY_LIMIT": "2Gi"},
        "OLLAMA_MEMORY_LIMIT='2Gi': expected at least OLLAMA_MEMORY_REQUEST (4Gi)",
        "raise OLLAMA_MEMORY_LIMIT or lower OLLAMA_MEMORY_REQUEST",
    ),
    ({"REDIS_CPU_REQUEST": "1"}, "REDIS_CPU_LIMIT='500m': expected at least REDIS_CPU_REQUEST (1)", ""),
    ({"POSTGRES_MEMORY_REQUEST": "2G", "POSTGRES_MEMORY_LIMIT": "1Gi"}, "POSTGRES_MEMORY_LIMIT=", "(2G)"),
    # quantities follow Kubernetes' grammar
    ({"OLLAMA_STORAGE": "50GB"}, "OLLAMA_STORAGE='50GB': expected a Kubernetes quantity of bytes", ""),
    ({"OLLAMA_STORAGE": "-5Gi"}, "OLLAMA_STORAGE=", "quantity of bytes"),
    ({"OLLAMA_STORAGE": "1.5.0Gi"}, "OLLAMA_STORAGE=", "quantity of bytes"),
    ({"REDIS_MEMORY_LIMIT": "256m"}, "REDIS_MEMORY_LIMIT='256m': expected whole bytes", "did you mean 256Mi?"),
    ({"OLLAMA_CPU_LIMIT": "8 cores"}, "OLLAMA_CPU_LIMIT=", "such as 500m"),
    ({"OLLAMA_CPU_REQUEST": "-1"}, "OLLAMA_CPU_REQUEST=", "such as 500m"),
    ({"OLLAMA_CPU_LIMIT": "1e-1"}, "OLLAMA_CPU_LIMIT='1e-1': expected at least OLLAMA_CPU_REQUEST (1)", ""),
    ({"OLLAMA_CPU_LIMIT": "1e"}, "OLLAMA_CPU_LIMIT=", "such as 500m"),
    # kind 6: say which fix
    ({"DOMAIN": "Example.com"}, "DOMAIN='Example.com': expected the name in lower case: example.com", ""),
    ({"DOMAIN": "example.com."}, "DOMAIN='example.com.': expected the name without the trailing dot: example.com", ""),
    ({"DOMAIN": "EXAMPLE.com."}, "DOMAIN=", "in lower case and without the trailing dot: example.com"),
    ({"CHAT_HOST": "Chat.example.com"}, "CHAT_HOST=", "in lower case: chat.example.com"),
    # what can never work where the value lands
    ({"WEBUI_ADMIN_PASSWORD": "p" * 73}, "WEBUI_ADMIN_PASSWORD=<redacted>: expected at most 72 bytes", ""),
    ({"NETDATA_PASSWORD": "é" * 37}, "NETDATA_PASSWORD=<redacted>: expected at most 72 bytes", "this one has 74"),
    ({"SUDO_PASSWORD": "two\nlines"}, "SUDO_PASSWORD=<redacted>: expected one line", ""),
    ({"REDIS_PASSWORD": "undecodable-\udcff-byte"}, "REDIS_PASSWORD=<redacted>: expected text that is valid UTF-8", ""),
    ({"WEBUI_ADMIN_NAME": "Ad\x00min"}, "WEBUI_ADMIN_NAME='Ad\\x00min': expected text without NUL", ""),
    # a schedule Kubernetes' CronJob would refuse, or never run (issue 17)
    (
        {"BACKUP_SCHEDULE": "0 17 3 * * *"},
        "BACKUP_SCHEDULE='0 17 3 * * *': expected a cron schedule such as 17 3 * * *",
        "6 fields, not 5 (Kubernetes reads no seconds field)",
    ),
    ({"BACKUP_SCHEDULE": "TZ=Europe/Berlin 17 3 * * *"}, "BACKUP_SCHEDULE=", "no TZ=/CRON_TZ= prefix"),
    ({"BACKUP_SCHEDULE": "CRON_TZ=UTC 17 3 * * *"}, "BACKUP_SCHEDULE=", "no TZ=/CRON_TZ= prefix"),
    ({"BACKUP_SCHEDULE": "@every 24h"}, "BACKUP_SCHEDULE=", "@every is not one of @yearly"),
    ({"BACKUP_SCHEDULE": "nightly"}, "BACKUP_SCHEDULE=", "1 fields, not 5"),
    ({"BACKUP_SCHEDULE": "17 3 * * 7"}, "BACKUP_SCHEDULE=", "day of week '7' is outside 0-6"),
    ({"BACKUP_SCHEDULE": "0 0 30 2 *"}, "BACKUP_SCHEDULE=", "this one never runs"),
    ({"BACKUP_KEEP": "0"}, "BACKUP_KEEP='0': expected a whole number from 1 to 100", ""),
    ({"BACKUP_STORAGE": "0"}, "BACKUP_STORAGE='0': expected a volume size above zero", ""),
]


@pytest.mark.parametrize(("environ", "start", "fix"), REFUSED, ids=[next(iter(e)) for e, _, _ in REFUSED])
def test_a_bad_setting_is_one_problem_naming_it_and_the_fix(environ, start, fix):
    problems = problems_of(**environ)
    assert len(problems) == 1, problems
    assert problems[0].startswith(start), problems[0]
    assert fix in problems[0]
    assert "\n" not in problems[0]
    for name, value in environ.items():
        if settings.BY_NAME[name].secret:
            assert value not in problems[0]


ACCEPTED = [
    {"API_ENDPOINT": "10.0.0.2"},
    {"API_ENDPOINT": "10.0.0.2:6443"},
    {"API_ENDPOINT": "k8s.example.com:443"},
    {"API_ENDPOINT": "[2001:db8::1]:6443"},
    {"API_ENDPOINT": "2001:db8::1"},
    {"K3S_NODE_LABELS": "tier=gpu, node.kubernetes.io/pool=a,example.com/empty=,kubernetes.io/arch=amd64"},
    {"K3S_NODE_TAINTS": "gpu=true:NoSchedule,dedicated:NoExecute,example.com/x=y:PreferNoSchedule"},
    {"K3S_TLS_SAN": "k8s.example.com, 10.0.0.9,2001:db8::2,localhost,*.k8s.example.com"},
    {"K3S_INSTALL_URL": "file:///srv/k3s/install.sh"},
    {"OLLAMA_MEMORY_REQUEST": "16Gi"},  # equal to the limit
    {"OLLAMA_CPU_REQUEST": "8000m", "OLLAMA_MEMORY_LIMIT": "17179869184", "OLLAMA_STORAGE": "1e11"},
    {"REDIS_CPU_LIMIT": ".5", "REDIS_MEMORY_REQUEST": "64M", "REDIS_STORAGE": "1Ti"},
    {"SERVERS": "a.example.com,b.example.com,c.example.com", "AGENTS": "d.example.com"},
    {"WEBUI_ADMIN_PASSWORD": "p" * 72, "NETDATA_PASSWORD": "é" * 36},
    {"BACKUP_SCHEDULE": "off", "BACKUP_KEEP": "1", "BACKUP_STORAGE": "100Mi"},
    {"BACKUP_SCHEDULE": "@weekly"},
    {"BACKUP_SCHEDULE": "30 2 * * MON-FRI"},
]


@pytest.mark.parametrize("environ", ACCEPTED, ids=[next(iter(e)) for e in ACCEPTED])
def test_good_values_of_the_same_settings_pass(environ):
    loaded = loads(**environ)
    for name, value in environ.items():
        if not settings.BY_NAME[name].secret:
            assert loaded[name] == value.strip()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        (".5", "0.5"),
        ("1.", "1"),
        ("+1k", "1000"),
        ("1Ki", "1024"),
        ("1Gi", str(2**30)),
        ("1e3", "1000"),
        ("1E-3", "0.001"),
        ("1E", str(10**18)),
        ("1Ei", str(2**60)),
        ("10n", "1E-8"),
        ("3u", "0.000003"),
    ],
)
def test_quantities_parse_by_the_kubernetes_grammar(text, value):
    from decimal import Decimal

    assert settings.parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "1 Gi", "1GB", "1e", "e3", "1.2.3", "Gi", "1KiB", "0x10", "1_000", "--1"])
def test_what_is_no_quantity(text):
    assert settings.parse_quantity(text) is None


def test_every_problem_is_reported_at_once_before_anything_is_touched():
    problems = problems_of(
        API_ENDPOINT="https://10.0.0.2:6443",
        K3S_NODE_LABELS="garbage",
        MONITOR_HOST="chat.${DOMAIN}",
        K3S_INSTALL_URL="http://get.k3s.io/",
        OLLAMA_MEMORY_LIMIT="1Gi",
        SERVERS="a.example.com",
        AGENTS="a.example.com",
    )
    assert [p.split("=")[0].split(":")[0] for p in problems] == [
        "K3S_INSTALL_URL",
        "API_ENDPOINT",
        "K3S_NODE_LABELS",
        "OLLAMA_MEMORY_LIMIT",
        "MONITOR_HOST",
        "AGENTS",
    ]


def test_a_setting_that_failed_its_own_check_is_not_judged_again():
    # A limit that is no quantity is one problem, not also "below its request".
    assert len(problems_of(OLLAMA_MEMORY_LIMIT="lots")) == 1
    assert len(problems_of(DOMAIN="Bad_Domain")) == 1  # not also CHAT_HOST == ... or WEBUI_ADMIN_EMAIL


def test_a_long_value_is_shown_cut_on_one_line():
    (problem,) = problems_of(OLLAMA_IMAGE="x" * 5000)
    assert len(problem) < 300
    assert "(5000 characters)" in problem


def test_a_secret_keeps_its_surrounding_blanks_and_a_blank_one_is_unset():
    loaded = loads(
        POSTGRES_PASSWORD="  spaced password  ", REDIS_PASSWORD="   ", OLLAMA_IMAGE=" ollama/ollama:0.32.15 "
    )
    assert loaded.secrets["POSTGRES_PASSWORD"] == "  spaced password  "
    assert "REDIS_PASSWORD" not in loaded.secrets
    assert loaded["OLLAMA_IMAGE"] == "ollama/ollama:0.32.15"


# -- kind 1 and 2, from a file ------------------------------------------------------------------
def test_env_file_values_are_literal_and_empty_is_unset(tmp_path):
    path = tmp_path / "prod.env"
    path.write_text(
        "DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nPOSTGRES_PASSWORD='Xy7${DOMAIN}q-long'\n"
        "OLLAMA_STORAGE=\nOPEN_WEBUI_IMAGE=\nCHAT_HOST=\n"
    )
    path.chmod(0o600)
    loaded = settings.load("prod", env_dir=tmp_path, environ={})
    assert loaded.secrets["POSTGRES_PASSWORD"] == "Xy7${DOMAIN}q-long"
    assert loaded["OLLAMA_STORAGE"] == "50Gi"
    assert loaded["OPEN_WEBUI_IMAGE"] == settings.BY_NAME["OPEN_WEBUI_IMAGE"].default
    assert loaded["CHAT_HOST"] == "chat.x.example.com"


# -- the one reader: env files -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "line", "fix"),
    [
        (b"DOMAIN=x.example.com\nACME_EMAIL a@example.com\n", 2, "write NAME=value"),
        (b"DOMAIN=x.example.com\nPOSTGRES_PASSWORD='unterminated\n", 2, "close every quote"),
        (b"DOMAIN=x.example.com\n\nWEBUI_ADMIN_NAME=Adm\xefn\n", 3, "save the file as UTF-8"),
    ],
    ids=["no-equals", "open-quote", "latin-1"],
)
def test_an_env_file_that_does_not_parse_names_file_and_line(tmp_path, content, line, fix):
    path = tmp_path / "prod.env"
    path.write_bytes(content)
    with pytest.raises(SettingsError) as err:
        settings.load("prod", env_dir=tmp_path, environ={})
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}:{line}: ")
    assert fix in problem.split(" — fix: ")[1]
    assert "unterminated" not in problem  # the content (secrets) is never shown
    assert "a@example.com" not in problem


def test_crlf_bom_export_and_inline_comments_still_read(tmp_path):
    path = tmp_path / "prod.env"
    path.write_bytes(b"\xef\xbb\xbfexport DOMAIN=x.example.com  # the domain\r\nACME_EMAIL=a@example.com\r\n")
    assert settings.load("prod", env_dir=tmp_path, environ={})["DOMAIN"] == "x.example.com"


# -- kind 5: kubeconfigs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "start", "fix"),
    [
        (
            b"apiVersion: v1\nclusters:\n- cluster:\n    server: https://1.2.3.4:6443\n  name: [x\n",
            ":6: not valid YAML",
            "move it",
        ),
        (b"just a string\n", ": not a kubeconfig", "move it"),
        (b"replicaCount: 2\n", ": not a kubeconfig", "move it"),  # a stray values.yaml is not merged into
        (b"kind: Config\nclusters:\n- just-a-name\n", ": clusters[0] is not a mapping", "move it"),
        (b"kind: Config\n---\nkind: Config\n", ":3: holds 2 YAML documents", "keep only one"),
        (b"kind: Config\nusers: [\xff]\n", ":2: not UTF-8 text", ""),
        (
            b"kind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://1.2.3.4:6443', "
            b"certificate-authority-data: 'not*base64!'}\n",
            ": clusters[0] (c): cluster.certificate-authority-data is not valid base64",
            "move it",
        ),
        (b"kind: Config\nusers:\n- name: u\n  user: 5\n", ": users[0] (u): user is int 5, not a mapping", "move it"),
        (
            b"kind: Config\ncontexts:\n- name: x\n  context: {cluster: c, user: [u]}\n",
            ": contexts[0] (x): context.user is list ['u'], not text",
            "move it",
        ),
        (b"kind: Config\ncontexts:\n- name: 7\n", ": contexts[0] has name 7, not a name", "move it"),
        (b"kind: Config\ncurrent-context: [a]\n", ": current-context is list ['a'], not a name", "move it"),
    ],
    ids=[
        "truncated",
        "string",
        "values-yaml",
        "entry-not-mapping",
        "two-documents",
        "not-utf8",
        "bad-base64",
        "user-not-mapping",
        "context-user-list",
        "name-number",
        "current-context-list",
    ],
)
def test_a_kubeconfig_that_is_not_one_is_one_line(tmp_path, content, start, fix):
    path = tmp_path / "config"
    path.write_bytes(content)
    for attempt in (
        lambda: kubeconfig.check_file(path, fix="move it aside"),
        lambda: kubeconfig.write(path, {"kind": "Config", "clusters": []}, merge_into_existing=True),
        lambda: kubeconfig.forget(path, "k3stack"),
    ):
        with pytest.raises(K3stackError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith(f"{path}{start}"), message
        assert fix in message.split("fix:")[1]
        assert "\n" not in message
    assert path.read_bytes() == content  # never clobbered


def test_a_missing_kubeconfig_is_one_line(tmp_path):
    with pytest.raises(K3stackError, match=r"config: does not exist — fix: check the path"):
        kubeconfig.check_file(tmp_path / "config")
    (tmp_path / "config").write_text("just a string\n")
    with pytest.raises(K3stackError, match=r"config: not a kubeconfig .*fix: point --kubeconfig .* `inv kubeconfig`"):
        kubeconfig.check_file(tmp_path / "config")


def test_a_kubeconfig_fetched_from_a_host_may_be_bytes_and_bad_bytes_name_the_line():
    with pytest.raises(K3stackError, match=r"^web-1:/etc/rancher/k3s/k3s.yaml:2: not UTF-8 text"):
        kubeconfig.rewrite(
            b"kind: Config\n\xff\n", server="https://10.0.0.2:6443", name="p", source="web-1:/etc/rancher/k3s/k3s.yaml"
        )


# -- the reader for k8s/ templates (used by manifests once the lead wires it) -------------------------
def test_yaml_file_names_the_line_of_a_yaml_error(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [a\n")
    with pytest.raises(reader.ReadError) as err:
        reader.yaml_file(path, shown="k8s/t/x.yaml")
    assert str(err.value).startswith("k8s/t/x.yaml:5: not valid YAML (")
    assert err.value.line == 5


def test_wrapped_base64_in_a_kubeconfig_is_accepted_as_client_go_accepts_it(tmp_path):
    """Go's base64 decoder skips line breaks, so a folded certificate-authority-data is valid."""
    import base64

    data = base64.b64encode(b"x" * 120).decode()
    folded = data[:60] + "\n      " + data[60:]
    path = tmp_path / "config"
    path.write_text(
        "kind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://1.2.3.4:6443\n"
        f"    certificate-authority-data: |\n      {folded}\n"
    )
    assert kubeconfig.check_file(path)["clusters"][0]["name"] == "c"


def test_every_line_of_an_env_file_that_does_not_parse_is_named_at_once(tmp_path):
    """Not just the first: fixing one line only to meet the next is the loop issue 15 asks to end."""
    path = tmp_path / "prod.env"
    path.write_bytes(b"DOMAIN=x.example.com\nACME_EMAIL a@example.com\nOK=1\nWEBUI NAME=x\nALSO BAD\n")
    with pytest.raises(SettingsError) as err:
        settings.load("prod", env_dir=tmp_path, environ={})
    (problem,) = err.value.problems
    assert problem.startswith(f"{path}:2: cannot parse this line (also lines 4, 5) — fix: write NAME=value"), problem
    path.write_bytes(b"DOMAIN=x.example.com\nACME_EMAIL a@example.com\nALSO BAD\n")
    with pytest.raises(SettingsError) as err:
        settings.load("prod", env_dir=tmp_path, environ={})
    assert err.value.problems[0].startswith(f"{path}:2: cannot parse this line (also line 3) — fix:")


def test_render_out_onto_a_file_or_an_unwritable_place_is_one_line(tmp_path):
    from k3stack import pipeline
    from k3stack.errors import K3stackError

    objects = [mf.Manifest({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, "llm-stack/x.yaml")]
    taken = tmp_path / "objects.yaml"
    taken.write_text("mine\n")
    with pytest.raises(K3stackError, match=r"^--out .*objects.yaml: is a file, not a directory — fix: give a dir"):
        pipeline.write_rendered(objects, taken, private=False)
    assert taken.read_text() == "mine\n"  # never clobbered
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(K3stackError, match=r"^--out .*ro/out: cannot write .*ro/out \(Permission denied\)"):
            pipeline.write_rendered(objects, tmp_path / "ro" / "out", private=False)
    with pytest.raises(K3stackError, match=r"cannot write .*objects.yaml/x \(Not a directory\)"):
        pipeline.write_rendered(objects, taken / "x", private=False)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "22x", "-1"])
def test_a_port_flag_out_of_range_is_a_usage_error(port):
    from invoke import Exit

    from k3stack import face

    with pytest.raises(Exit) as caught:
        face.bootstrap_options((), (), None, port, False)
    assert caught.value.code == 2
