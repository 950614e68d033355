import re
from pathlib import Path

import pytest

from k3stack import settings
from k3stack.settings import SettingsError

BASE = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}


def load(tmp_path: Path, environ=None, env_name=None):
    return settings.load(env_name, env_dir=tmp_path, environ=environ if environ is not None else BASE)


def test_defaults_and_references_expand(tmp_path):
    s = load(tmp_path)
    assert s["CHAT_HOST"] == "chat.203.0.113.10.sslip.io"
    assert s["WEBUI_ADMIN_EMAIL"] == "admin@203.0.113.10.sslip.io"
    assert s.models == ["llama3.1:8b", "mistral:7b", "nomic-embed-text:v1.5"]
    assert s.flag("ACME_STAGING") is False
    assert s.secrets == {}
    assert "POSTGRES_PASSWORD" not in s.render_vars()


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {"OLLAMA_IMAGE": "ollama/ollama:latest", "OLLAMA_STORAGE": "lots"})
    problems = error.value.problems
    assert any(p.startswith("DOMAIN: not set") for p in problems)
    assert any(p.startswith("ACME_EMAIL: not set") for p in problems)
    assert any("OLLAMA_IMAGE='ollama/ollama:latest': expected a pinned tag" in p for p in problems)
    assert any(p.startswith("OLLAMA_STORAGE='lots': expected a Kubernetes quantity") for p in problems)
    assert len(problems) == 4


def test_secret_values_are_redacted_in_errors(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "POSTGRES_PASSWORD": "short1"})
    assert "POSTGRES_PASSWORD=<redacted>: expected at least 12 characters" in str(error.value)
    assert "short1" not in str(error.value)


def test_file_then_environment_override(tmp_path):
    (tmp_path / "prod.env").write_text("DOMAIN=file.example.com\nACME_EMAIL=a@example.com\nOLLAMA_MODELS=phi3:mini\n")
    s = load(tmp_path, {"OLLAMA_MODELS": "mistral:7b"}, env_name="prod")
    assert s["DOMAIN"] == "file.example.com"
    assert s.models == ["mistral:7b", "nomic-embed-text:v1.5"]  # the embedding model (default) is pulled too
    assert s.env_name == "prod"


@pytest.mark.parametrize(
    ("listed", "embedding", "models"),
    [
        ("mistral:7b", "nomic-embed-text:v1.5", ["mistral:7b", "nomic-embed-text:v1.5"]),
        ("nomic-embed-text:v1.5,mistral:7b", "nomic-embed-text:v1.5", ["nomic-embed-text:v1.5", "mistral:7b"]),
        ("all-minilm,mistral:7b", "all-minilm:latest", ["all-minilm", "mistral:7b"]),  # the same model by Ollama
        ("registry.ollama.ai/library/bge-m3:567m", "bge-m3:567m", ["registry.ollama.ai/library/bge-m3:567m"]),
        ("smollm2:135m", "smollm2:135m", ["smollm2:135m"]),
        ("mistral:7b", "", ["mistral:7b", "nomic-embed-text:v1.5"]),  # empty is unset: the default
    ],
)
def test_the_embedding_model_is_among_the_models_pulled_once(listed, embedding, models):
    s = load(Path("/nonexistent"), {**BASE, "OLLAMA_MODELS": listed, "OLLAMA_EMBEDDING_MODEL": embedding})
    assert s.models == models


def test_env_name_comes_from_k3stack_env(tmp_path):
    (tmp_path / "staging.env").write_text("DOMAIN=staging.example.com\nACME_EMAIL=a@example.com\n")
    assert load(tmp_path, {"K3STACK_ENV": "staging"})["DOMAIN"] == "staging.example.com"


def test_missing_env_file_names_the_path_and_the_fix(tmp_path):
    (tmp_path / "prod.env").write_text("")
    with pytest.raises(SettingsError, match=r"staging.env does not exist \(available: prod; copy env/example.env"):
        load(tmp_path, BASE, env_name="staging")


def test_unknown_setting_in_file_gets_a_hint(tmp_path):
    (tmp_path / "prod.env").write_text("DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nOLLAMA_MODEL=phi3\n")
    with pytest.raises(SettingsError, match=r"OLLAMA_MODEL: unknown setting in prod.env \(did you mean OLLAMA_"):
        load(tmp_path, {}, env_name="prod")


def test_world_readable_file_with_secrets_is_refused(tmp_path):
    path = tmp_path / "prod.env"
    path.write_text("DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nREDIS_PASSWORD=a-long-enough-secret\n")
    path.chmod(0o644)
    with pytest.raises(SettingsError, match=r"world-readable \(fix: chmod 600"):
        load(tmp_path, {}, env_name="prod")
    path.chmod(0o600)
    assert load(tmp_path, {}, env_name="prod").secrets["REDIS_PASSWORD"] == "a-long-enough-secret"


def test_example_env_documents_every_setting():
    text = (settings.REPO / "env" / "example.env").read_text()
    assert text == settings.example_env(), "env/example.env is stale: regenerate it from settings.example_env()"
    for setting in settings.SETTINGS:
        assert f"{setting.name}=" in text


def test_a_secret_is_literal_even_with_a_dollar_brace():
    environ = {
        "DOMAIN": "203.0.113.10.sslip.io",
        "ACME_EMAIL": "ops@example.com",
        "POSTGRES_PASSWORD": "Xy7${DOMAIN}q-long-enough",
        "CHAT_HOST": "chat.${DOMAIN}",
    }
    loaded = settings.load(env_dir=Path("/nonexistent"), environ=environ)
    assert loaded.secrets["POSTGRES_PASSWORD"] == "Xy7${DOMAIN}q-long-enough"
    assert loaded["CHAT_HOST"] == "chat.203.0.113.10.sslip.io"  # settings still build on each other


def test_addresses_written_into_chart_values_are_refused_when_they_could_break_them(tmp_path):
    for bad in ('o"ps@example.com', "ops@example.com\n#", "o ps@example.com"):
        with pytest.raises(SettingsError, match=r"ACME_EMAIL='.*': expected an e-mail address"):
            load(tmp_path, {**BASE, "ACME_EMAIL": bad})
    with pytest.raises(SettingsError, match=r"NETDATA_CHART_REPO=.*no spaces, quotes or backslashes"):
        load(tmp_path, {**BASE, "NETDATA_CHART_REPO": 'https://charts.example.com/"x'})
    assert load(tmp_path, {**BASE, "ACME_EMAIL": "ops+certs@mail.example.co"})["ACME_EMAIL"]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("DOMIAN", "DOMAIN"),
        ("OLLAMA_MODEL", "OLLAMA_MODELS"),
        ("WEBUI_ADMIN_PASWORD", "WEBUI_ADMIN_PASSWORD"),
        ("POSTGRES_PASWORD", "POSTGRES_PASSWORD"),
        ("STACK_NAMESPCE", "STACK_NAMESPACE"),
    ],
)
def test_did_you_mean_is_the_closest_setting_by_spelling(tmp_path, typo, meant):
    (tmp_path / "prod.env").write_text(f"DOMAIN=x.example.com\nACME_EMAIL=a@example.com\n{typo}=something\n")
    with pytest.raises(SettingsError, match=rf"{typo}: unknown setting in prod.env \(did you mean {meant}\?\)"):
        load(tmp_path, {}, env_name="prod")


def test_an_unrelated_unknown_setting_gets_no_guess(tmp_path):
    (tmp_path / "prod.env").write_text("DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nFAVOURITE_COLOUR=blue\n")
    with pytest.raises(SettingsError) as err:
        load(tmp_path, {}, env_name="prod")
    assert "FAVOURITE_COLOUR: unknown setting in prod.env; see env/example.env" in str(err.value)


def test_an_empty_value_counts_as_unset(tmp_path):
    (tmp_path / "prod.env").write_text(
        "DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nOPEN_WEBUI_IMAGE=\nCHAT_HOST=\nPOSTGRES_PASSWORD=\n"
        "OLLAMA_STORAGE=20Gi\n"
    )
    s = load(tmp_path, {"OLLAMA_STORAGE": ""}, env_name="prod")
    assert s["OPEN_WEBUI_IMAGE"] == settings.BY_NAME["OPEN_WEBUI_IMAGE"].default  # not `image: null`
    assert s["CHAT_HOST"] == "chat.x.example.com"  # not an Ingress matching every host
    assert "POSTGRES_PASSWORD" not in s.secrets  # generated, not an empty password
    assert s["OLLAMA_STORAGE"] == "20Gi"  # an empty environment variable does not blank the file's value


@pytest.mark.parametrize("name", ["STACK_NAMESPACE", "MONITORING_NAMESPACE"])
@pytest.mark.parametrize("reserved", ["default", "kube-system", "kube-public", "kube-node-lease"])
def test_reserved_namespaces_are_refused(tmp_path, name, reserved):
    with pytest.raises(SettingsError, match=rf"{name}='{reserved}': expected a namespace of the stack's own"):
        load(tmp_path, {**BASE, name: reserved})


def test_a_moving_tag_is_refused_unless_a_digest_pins_it():
    assert "pinned tag" in settings.image("ollama/ollama:latest")
    assert settings.image("ollama/ollama:latest@sha256:" + "a" * 64) is None  # the digest pins it
    assert settings.image("ghcr.io/open-webui/open-webui:v0.11.0@sha256:" + "b" * 64) is None
    assert settings.image("registry.local:5000/ollama:0.32.15") is None


# -- the decisions `inv mutate` showed unguarded (#19): thresholds, messages, each accepted spelling ----
def test_a_given_secret_needs_12_characters_exactly():
    assert settings.secret_value("x" * 11) == "at least 12 characters (or leave it unset and k3stack generates one)"
    assert settings.secret_value("x" * 12) is None


def test_a_bcrypt_secret_may_be_72_bytes_and_no_more():
    assert settings.bcrypt_secret("x" * 72) is None
    assert settings.bcrypt_secret("é" * 36) is None  # 72 bytes in UTF-8
    too_long = "at most 72 bytes (bcrypt hashes it and reads no further; this one has 73)"
    assert settings.bcrypt_secret("x" * 73) == settings.bcrypt_secret("é" * 36 + "x") == too_long
    assert settings.bcrypt_secret("x" * 11) == settings.secret_value("x" * 11)  # and the length rule too


def test_the_settings_error_names_its_source_and_lists_each_problem_on_its_line():
    error = SettingsError(["A: bad", "B: worse"], "env/prod.env")
    assert (error.problems, error.source) == (["A: bad", "B: worse"], "env/prod.env")
    assert str(error) == "2 problem(s) in settings (env/prod.env):\n  - A: bad\n  - B: worse"


@pytest.mark.parametrize("value", ["true", "false", "1", "0", "yes", "no", "TRUE", "False", "YES", "No"])
def test_a_boolean_is_one_of_six_words_in_any_case(value):
    assert settings.boolean(value) is None


@pytest.mark.parametrize("value", ["on", "off", "y", "2", "truee", ""])
def test_anything_else_is_no_boolean(value):
    assert settings.boolean(value) == "true or false"


@pytest.mark.parametrize(("value", "on"), [("true", True), ("TRUE", True), ("1", True), ("Yes", True),
                                            ("YES", True), ("false", False), ("0", False), ("no", False)])  # fmt: skip
def test_a_flag_is_on_for_true_1_and_yes_in_any_case(tmp_path, value, on):
    assert load(tmp_path, {**BASE, "GPU_ENABLED": value}).flag("GPU_ENABLED") is on


def test_a_name_that_lower_case_does_not_fix_gets_the_plain_expectation():
    assert settings.hostname("Not A Domain") == "a DNS name such as example.com or 203.0.113.10.sslip.io"
    assert settings.hostname("Chat.Example.COM.") == (
        "the name in lower case and without the trailing dot: chat.example.com "
        "(Ingress hosts are lower-case names without a root dot)"
    )


def test_an_e_mail_address_may_have_capitals():
    assert settings.email("Ops.Team@Example.COM") is None
    assert settings.email("ops@") == "an e-mail address (Let's Encrypt sends expiry notices)"


def test_a_sudo_password_is_one_line():
    assert settings.sudo_password("a plain password") is None
    for broken in ("line\nbreak", "carriage\rreturn"):
        assert settings.sudo_password(broken) == "one line (sudo reads the password up to the first line break)"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.2", ("10.0.0.2", None)),
        ("10.0.0.2:6443", ("10.0.0.2", 6443)),
        ("k8s.example.com:443", ("k8s.example.com", 443)),
        ("[2001:db8::1]:6443", ("2001:db8::1", 6443)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("::1", ("::1", None)),  # a bare IPv6 address of two colons
        ("2001:db8::1", ("2001:db8::1", None)),
    ],
)
def test_an_api_endpoint_splits_into_host_and_port(text, parsed):
    assert settings.split_endpoint(text) == parsed


@pytest.mark.parametrize("text", ["[::1", "[::1]6443", "[::1]:", "10.0.0.2:0", "10.0.0.2:65536", "bad host:1"])
def test_what_is_no_api_endpoint(text):
    with pytest.raises(ValueError, match=re.escape(text)):  # the value, for whoever reports it
        settings.split_endpoint(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://[2001:db8::1]:6443", "host[:port] without a scheme or path: [2001:db8::1]:6443 or 2001:db8::1"),
        ("https://k8s.example.com", "host[:port] without a scheme or path: k8s.example.com:6443 or k8s.example.com"),
        # no scheme or path to drop: the plain expectation, not a "fix" that is none
        ("10.0.0.2:0", "host[:port] without a scheme or path, e.g. 203.0.113.10:6443 or 203.0.113.10"),
        ("https://[::1", "host[:port] without a scheme or path, e.g. 203.0.113.10:6443 or 203.0.113.10"),
        ("https://not valid/", "host[:port] without a scheme or path, e.g. 203.0.113.10:6443 or 203.0.113.10"),
    ],
)
def test_a_bad_api_endpoint_gets_the_form_that_was_meant_only_when_there_is_one(text, expected):
    assert settings.endpoint(text) == expected


def test_lists_name_every_bad_entry_comma_separated():
    assert settings.tls_sans("a b,ok.example.com,c d").endswith("(not a b, c d)")
    assert settings.host_list("a b,ok.example.com,c d").endswith("(not a b, c d)")


@pytest.mark.parametrize("key", ["kubernetes.io/role", "k8s.io/role", "team.kubernetes.io/role", "team.k8s.io/role"])
def test_the_kubelet_refuses_kubernetes_io_and_k8s_io_label_keys(key):
    assert "the kubelet refuses kubernetes.io/k8s.io keys" in settings._label_key_problem(key)


@pytest.mark.parametrize("key", ["node.kubernetes.io/pool", "team.node.kubernetes.io/pool",
                                 "kubelet.kubernetes.io/x", "topology.kubernetes.io/zone"])  # fmt: skip
def test_the_kubelets_own_label_keys_are_allowed(key):
    assert settings._label_key_problem(key) is None


def test_a_label_or_taint_value_with_a_separator_is_named_as_the_value():
    value_problem = "value '{}': at most 63 letters, digits, -, _ or ., starting and ending alphanumeric"
    assert settings.node_labels("tier=a=b") == "Kubernetes labels key=value, comma-separated; " + value_problem.format(
        "a=b"
    )
    assert settings.node_taints("gpu=b:c:NoSchedule") == (
        "taints key=value:Effect, comma-separated; " + value_problem.format("b:c")
    )


def test_the_installer_checksum_is_64_lower_case_hex_digits(tmp_path):
    digest = "0123456789abcdef" * 4
    assert load(tmp_path, {**BASE, "K3S_INSTALL_SHA256": digest})["K3S_INSTALL_SHA256"] == digest
    for bad in (digest.upper(), digest[:-1], digest + "0", "sha256:" + digest):
        with pytest.raises(SettingsError) as error:
            load(tmp_path, {**BASE, "K3S_INSTALL_SHA256": bad})
        assert error.value.problems == [
            f"K3S_INSTALL_SHA256={bad!r}: expected 64 lower-case hex digits (output of sha256sum)"
        ]


def test_a_long_value_is_shown_whole_up_to_80_characters_then_cut_to_60():
    plain = settings.BY_NAME["DOMAIN"]
    assert settings.redact(plain, "x" * 80) == repr("x" * 80)
    assert settings.redact(plain, "x" * 81) == f"{'x' * 60!r}… (81 characters)"
    assert settings.redact(settings.BY_NAME["REDIS_PASSWORD"], "x" * 81) == "<redacted>"


def test_each_component_has_four_resource_settings_checked_by_kind():
    made = settings._resources("open-webui", "250m", "1Gi", "2", "2Gi")
    assert [(s.name, s.default, s.doc, s.check) for s in made] == [
        ("OPEN_WEBUI_CPU_REQUEST", "250m", "open-webui: CPU requested", settings.quantity),
        ("OPEN_WEBUI_MEMORY_REQUEST", "1Gi", "open-webui: memory requested", settings.byte_quantity),
        ("OPEN_WEBUI_CPU_LIMIT", "2", "open-webui: CPU limit", settings.quantity),
        ("OPEN_WEBUI_MEMORY_LIMIT", "2Gi", "open-webui: memory limit", settings.byte_quantity),
    ]
    assert not any(s.secret for s in made)


# Every check, its exact expectation, and the values at its edges: (check, accepted, refused, expected).
URL = "an https:// URL (no spaces, quotes or backslashes)"
CHECKS = [
    (settings.quantity, ["0", "500m", "2"], ["-1", "lots"], "a Kubernetes quantity such as 500m, 2, 512Mi or 10Gi"),
    (settings.byte_quantity, ["0", "512Mi"], ["-1Mi"], "a Kubernetes quantity of bytes such as 512Mi or 10Gi"),
    (settings.byte_quantity, [], ["0.5"], "whole bytes such as 512Mi or 10Gi: 0.5 is a fraction of a byte"),
    (settings.dns_label, ["llm-stack", "a"], ["Bad", "-a", ""], "a lower-case DNS label (a-z, 0-9, -)"),
    (
        settings.namespace,
        ["llm-stack"],
        ["default"],
        "a namespace of the stack's own, not default (reserved: default, kube-system, kube-public, kube-node-lease)",
    ),
    (settings.image, ["redis:7.4.5"], ["redis"], "an image reference with a pinned tag, e.g. ollama/ollama:0.32.15"),
    (
        settings.image,
        ["x/y:main@sha256:" + "0" * 64],
        ["x/y:latest", "x/y:main", "x/y:master", "x/y:dev"],
        "a pinned tag, not a moving one like :latest or :main",
    ),
    (settings.version, ["3.7.172"], ["3.7", "v3.7.172"], "an exact chart version such as 3.7.172"),
    (settings.k8s_minor, ["1.35"], ["1.3", "2.35", "1.35.1"], "a Kubernetes minor version such as 1.35"),
    (settings.url, ["https://charts.example.com/x"], ["ftp://x", "https://a b"], URL),
    (
        settings.installer_url,
        ["file:///tmp/install.sh", "https://example.com/install.sh"],
        ["file:///tmp/my install.sh", "ftp://x"],
        "an https:// URL (or file:/// for a local copy; no spaces, quotes or backslashes)",
    ),
    (
        settings.k3s_version,
        ["v1.35.8+k3s1", "stable", "latest", "testing"],
        ["1.35", "v1.35.8", "edge"],
        "a K3s release such as v1.35.8+k3s1 (or, outside CI, a channel: stable, latest, testing)",
    ),
    (settings.port, ["1", "22", "65535"], ["0", "65536", "x", "-1"], "a TCP port number"),
    (settings.count, ["1", "100"], ["0", "101", "x", "1.5"], "a whole number from 1 to 100"),
    (settings.seconds, ["0.5", "1", "120"], ["0", "0.0", "-1", "1e3", "x"], "a number of seconds"),
    (settings.sha256_hex, ["0" * 64], ["0" * 63, "A" * 64], "64 lower-case hex digits (output of sha256sum)"),
    (
        settings.email,
        ["ops@example.com"],
        ["ops", "a b@example.com"],
        "an e-mail address (Let's Encrypt sends expiry notices)",
    ),
]


# -- BACKUP_SCHEDULE: what Kubernetes' CronJob reads (robfig/cron's standard parser) ------------------
GOOD_SCHEDULES = {
    # schedule: the longest time between two runs (what `inv status` calls stale at twice)
    "17 3 * * *": 86400,
    "@daily": 86400,
    "@midnight": 86400,
    "@hourly": 3600,
    "@weekly": 7 * 86400,
    "@monthly": 31 * 86400,  # a 31-day month: the longest gap
    "@yearly": 366 * 86400,
    "@annually": 366 * 86400,
    "*/15 * * * *": 900,
    "5/10 * * * *": 600,  # N/STEP runs from N to the field's end: 5, 15, ..., 55
    "0 */6 * * *": 6 * 3600,
    "0 1,13 * * *": 12 * 3600,
    "0 9-17 * * *": 16 * 3600,  # 17:00 -> 9:00 the next day
    "30 2 * * MON-FRI": 3 * 86400,  # Friday -> Monday
    "30 2 * * mon-fri": 3 * 86400,  # names in any case
    "0 3 * * 0": 7 * 86400,
    "0 3 * * sun,wed": 4 * 86400,
    "0 3 1 * *": 31 * 86400,
    "0 3 1 * mon": 7 * 86400,  # day of month OR day of week when both are restricted (robfig's rule)
    "0 3 ? * ?": 86400,  # ? is *
    "0 4 1 JAN,jul *": 184 * 86400,  # 1 July -> 1 January
    "0 0 29 2 *": 1461 * 86400,  # leap days only
    "  17   3 * * *  ": 86400,  # blanks between fields as Go's strings.Fields splits them
}
BAD_SCHEDULES = {
    "0 17 3 * * *": "6 fields, not 5 (Kubernetes reads no seconds field)",
    "17 3 * *": "4 fields, not 5",
    "": "0 fields, not 5",
    "TZ=UTC 17 3 * * *": "no TZ=/CRON_TZ= prefix",
    "CRON_TZ=Europe/Berlin 17 3 * * *": "no TZ=/CRON_TZ= prefix",
    "@every 1h": "@every is not one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
    "@Daily": "@Daily is not one of",
    "60 3 * * *": "minute '60' is outside 0-59",
    "17 24 * * *": "hour '24' is outside 0-23",
    "17 3 0 * *": "day of month '0' is outside 1-31",
    "17 3 * 13 *": "month '13' is outside 1-12",
    "17 3 * * 7": "day of week '7' is outside 0-6",
    "17 3 * FOO *": "month 'FOO' is not a number or a name (JAN, FEB",
    "17 3 * * SUNDAY": "day of week 'SUNDAY' is not a number or a name (SUN, MON",
    "17 3 MON * *": "day of month 'MON' is not a number",
    "*/0 3 * * *": "minute '*/0': the step after / must be a positive number",
    "1/2/3 3 * * *": "minute '1/2/3' has two /",
    "5-1 3 * * *": "minute '5-1' runs backwards",
    "1,,2 3 * * *": "minute '' is not a number",
    "-1 3 * * *": "minute '' is not a number",
    "0 0 30 2 *": "this one never runs (no such date)",
    "0 0 31 4,6,9,11 *": "this one never runs (no such date)",
}


@pytest.mark.parametrize(("schedule", "seconds"), GOOD_SCHEDULES.items(), ids=list(GOOD_SCHEDULES))
def test_a_schedule_kubernetes_reads_is_taken_with_its_longest_gap(schedule, seconds):
    assert settings.backup_schedule(schedule) is None
    assert settings.cron_interval(schedule) == seconds


@pytest.mark.parametrize(("schedule", "why"), BAD_SCHEDULES.items(), ids=list(BAD_SCHEDULES))
def test_a_schedule_kubernetes_refuses_or_that_never_runs_is_refused_saying_why(schedule, why):
    problem = settings.backup_schedule(schedule)
    assert problem is not None
    assert problem.startswith(settings.CRON_EXAMPLE + "; ")
    assert why in problem
    assert settings.cron_interval(schedule) is None


def test_off_suspends_the_cronjob_on_the_default_schedule(tmp_path):
    assert settings.backup_schedule("off") is None
    assert settings.backup_schedule("OFF") is None
    on = load(tmp_path, {**BASE, "BACKUP_SCHEDULE": "@weekly"}).render_vars()
    assert (on["BACKUP_CRONJOB_SCHEDULE"], on["BACKUP_SUSPEND"]) == ("@weekly", "false")
    off = load(tmp_path, {**BASE, "BACKUP_SCHEDULE": "off"}).render_vars()
    assert (off["BACKUP_CRONJOB_SCHEDULE"], off["BACKUP_SUSPEND"]) == ("17 3 * * *", "true")
    assert settings.BY_NAME["BACKUP_SCHEDULE"].default == "17 3 * * *"
    assert "off suspends" in settings.BY_NAME["BACKUP_SCHEDULE"].doc


def test_a_bad_schedule_is_one_problem_naming_the_setting_and_an_example(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "BACKUP_SCHEDULE": "0 17 3 * * *", "BACKUP_KEEP": "0"})
    assert error.value.problems == [
        "BACKUP_SCHEDULE='0 17 3 * * *': expected a cron schedule such as 17 3 * * * (minute hour day-of-month "
        "month day-of-week), @daily or @weekly, or off; 6 fields, not 5 (Kubernetes reads no seconds field)",
        "BACKUP_KEEP='0': expected a whole number from 1 to 100",
    ]


@pytest.mark.parametrize(("check", "good", "bad", "expected"), CHECKS, ids=[c[0].__name__ for c in CHECKS])
def test_each_check_accepts_its_edges_and_refuses_with_its_exact_expectation(check, good, bad, expected):
    assert {v: check(v) for v in good} == dict.fromkeys(good)
    assert {v: check(v) for v in bad} == dict.fromkeys(bad, expected)


def test_load_reads_the_process_environment_and_k3stack_env_dir_when_given_none(tmp_path, monkeypatch):
    (tmp_path / "Prod_1.env").write_text("DOMAIN=file.example.com\nACME_EMAIL=a@example.com\n")
    monkeypatch.setenv("K3STACK_ENV_DIR", str(tmp_path))
    monkeypatch.setenv("K3STACK_ENV", "Prod_1")  # capitals, digits and _ make a plain name too
    monkeypatch.setenv("OLLAMA_MODELS", "phi3:mini")
    loaded = settings.load()
    assert (loaded["DOMAIN"], loaded.models, loaded.source) == (
        "file.example.com",
        ["phi3:mini", "nomic-embed-text:v1.5"],
        str(tmp_path / "Prod_1.env"),
    )


def test_a_bad_env_name_is_refused_naming_it_and_the_file(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, BASE, env_name="../prod")
    assert error.value.problems == ["--env '../prod': use a plain name such as prod (reads env/prod.env)"]
    assert error.value.source == str(tmp_path / "../prod.env")


def test_every_error_names_its_source(tmp_path):
    (tmp_path / "a.env").write_text("")
    (tmp_path / "b.env").write_text("")
    (tmp_path / "example.env").write_text("")  # the template is no env of its own
    with pytest.raises(SettingsError) as missing:
        load(tmp_path, BASE, env_name="staging")
    assert missing.value.source == str(tmp_path / "staging.env")
    assert "(available: a, b; copy env/example.env to start one)" in missing.value.problems[0]
    with pytest.raises(SettingsError, match=r"\(available: none; "):
        load(tmp_path / "a.env", BASE, env_name="staging")  # a folder without env files
    (tmp_path / "broken.env").write_text("this is not a setting\n")
    with pytest.raises(SettingsError) as broken:
        load(tmp_path, BASE, env_name="broken")
    assert broken.value.source == str(tmp_path / "broken.env")
    with pytest.raises(SettingsError) as bad_file:
        load(tmp_path, {**BASE, "DOMAIN": "bad domain"}, env_name="a")
    assert bad_file.value.source == str(tmp_path / "a.env")
    with pytest.raises(SettingsError) as no_file:
        load(tmp_path, {**BASE, "DOMAIN": "bad domain"})
    assert no_file.value.source == str(tmp_path / "default.env") + " (absent) + environment"
    assert load(tmp_path, BASE, env_name="a").source == str(tmp_path / "a.env")


def test_only_a_world_readable_file_with_secrets_is_refused(tmp_path):
    path = tmp_path / "prod.env"
    path.write_text("DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nREDIS_PASSWORD=a-long-enough-secret\n")
    path.chmod(0o601)  # others may execute it, not read it
    assert load(tmp_path, {}, env_name="prod").secrets["REDIS_PASSWORD"] == "a-long-enough-secret"


def test_a_distant_name_gets_no_guess(tmp_path):
    (tmp_path / "prod.env").write_text("DOMAIN=x.example.com\nACME_EMAIL=a@example.com\nDOMAIN_NAME=y\n")
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {}, env_name="prod")  # DOMAIN is 0.71 alike: a topic, not a typo
    assert error.value.problems == ["DOMAIN_NAME: unknown setting in prod.env; see env/example.env"]


def test_a_required_setting_left_out_says_what_it_is_and_what_it_takes(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {"ACME_EMAIL": "ops@example.com"})
    assert error.value.problems == [
        "DOMAIN: not set — public DNS name of the server (own domain, or <ip>.sslip.io); "
        "expected a DNS name such as example.com or 203.0.113.10.sslip.io"
    ]


@pytest.mark.parametrize("ref", ["NOT_A_SETTING", "POSTGRES_PASSWORD"])
def test_a_reference_to_no_setting_or_to_a_secret_is_one_problem(tmp_path, ref):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "CHAT_HOST": f"${{{ref}}}", "POSTGRES_PASSWORD": "a-long-enough-secret"})
    assert error.value.problems == [f"CHAT_HOST: refers to ${{{ref}}}, which is not a setting that can be referenced"]


def test_a_reference_expands_the_references_of_what_it_refers_to(tmp_path):
    loaded = load(tmp_path, {**BASE, "DOMAIN": "example.com", "MONITOR_HOST": "monitor.${CHAT_HOST}"})
    assert loaded["MONITOR_HOST"] == "monitor.chat.example.com"  # CHAT_HOST is chat.${DOMAIN}
    with pytest.raises(SettingsError) as error:  # a reference to nothing is empty; MONITOR_HOST is CHAT_HOST's problem
        load(tmp_path, {**BASE, "CHAT_HOST": "chat.${NOPE}", "MONITOR_HOST": "m.${CHAT_HOST}"})
    assert error.value.problems == [
        "CHAT_HOST: refers to ${NOPE}, which is not a setting that can be referenced",
        "CHAT_HOST='chat.': expected a DNS name such as example.com or 203.0.113.10.sslip.io",
    ]


@pytest.mark.parametrize("own", ["CHAT_HOST", "MONITOR_HOST"])
def test_hosts_that_failed_their_own_check_are_not_compared(tmp_path, own):
    """DOMAIN fails; one host refers to it (skipped), the other holds the same bad name itself."""
    other = ({"CHAT_HOST", "MONITOR_HOST"} - {own}).pop()
    environ = {**BASE, "DOMAIN": "bad_domain.example", other: "chat.${DOMAIN}", own: "chat.bad_domain.example"}
    with pytest.raises(SettingsError) as error:
        load(tmp_path, environ)
    assert [p.split("=")[0] for p in error.value.problems] == ["DOMAIN", own]


@pytest.mark.parametrize("name", ["SERVERS", "AGENTS"])
def test_a_host_list_that_failed_its_check_is_not_checked_for_repeats(tmp_path, name):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, name: "bad host,bad host"})
    assert len(error.value.problems) == 1
    assert error.value.problems[0].startswith(f"{name}='bad host,bad host': expected comma-separated")


def test_repeated_hosts_are_listed_together(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "SERVERS": "a.example.com,a.example.com,b.example.com,b.example.com"})
    assert error.value.problems == ["SERVERS: a.example.com, b.example.com listed twice; expected each host once"]
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "SERVERS": "a.example.com,b.example.com", "AGENTS": "b.example.com,a.example.com"})
    assert error.value.problems[0].startswith("AGENTS: a.example.com, b.example.com also in SERVERS")


def test_a_failed_request_hides_only_its_own_limit_rule(tmp_path):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "OLLAMA_CPU_REQUEST": "lots", "OLLAMA_MEMORY_LIMIT": "1Gi"})
    assert [p.split("=")[0] for p in error.value.problems] == ["OLLAMA_CPU_REQUEST", "OLLAMA_MEMORY_LIMIT"]


def test_a_nested_reference_to_nothing_expands_to_nothing(tmp_path):
    """WEBUI_ADMIN_NAME (no check of its own) refers to nothing; CHAT_HOST builds on it and is judged
    on what remains."""
    with pytest.raises(SettingsError) as error:
        load(tmp_path, {**BASE, "WEBUI_ADMIN_NAME": "x${NOPE}", "CHAT_HOST": "${WEBUI_ADMIN_NAME}.example.com"})
    assert error.value.problems == [
        "WEBUI_ADMIN_NAME: refers to ${NOPE}, which is not a setting that can be referenced"
    ]
