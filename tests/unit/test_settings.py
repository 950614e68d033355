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
    assert s.models == ["mistral:7b"]
    assert s.env_name == "prod"


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
