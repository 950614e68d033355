"""scripts/secrets.py: where each secret comes from, and an export that reads back byte-exact."""

from __future__ import annotations

import stat
from pathlib import Path

from k3stack import secrets as stack_secrets
from k3stack import settings
from scripts import secrets as script

TRICKY = "it's a \\\\ back'slash ${DOMAIN} # not a comment"


def loaded(**extra):
    environ = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com", **extra}
    return settings.load(env_dir=Path("/nonexistent"), environ=environ)


def test_each_secret_says_where_it_comes_from():
    def read(namespace, name):
        return {"POSTGRES_PASSWORD": "kept-in-the-cluster-1"} if name == "postgres" else None

    config = loaded(REDIS_PASSWORD="given-in-settings-12")
    resolved = stack_secrets.resolve(config, read)
    origin = {row[0]: row[2] for row in script.rows(config, resolved)}
    assert origin["POSTGRES_PASSWORD"] == "the cluster (kept from an earlier deploy)"
    assert origin["REDIS_PASSWORD"] == "the settings (env file or environment)"
    assert origin["WEBUI_SECRET_KEY"].startswith("generated now")
    assert {row[1] for row in script.rows(config, resolved)} >= {"llm-stack/postgres POSTGRES_PASSWORD"}


def test_export_is_private_and_reads_back_exactly(tmp_path):
    values = {setting: f"value-of-{setting}" for setting in stack_secrets.LOCATIONS}
    values["POSTGRES_PASSWORD"] = TRICKY
    path = tmp_path / "secrets.env"
    path.write_text("older, world-readable\n")
    path.chmod(0o644)
    script.export(path, values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # k3stack's own reader (python-dotenv, interpolation off) gets every value back byte-exact
    back = settings.load("secrets", env_dir=tmp_path, environ={"DOMAIN": "example.com", "ACME_EMAIL": "a@example.com"})
    assert {name: back.secrets[name] for name in values} == values
