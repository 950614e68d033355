"""scripts/smoke.py: the public checks with only host names and logins (no kubeconfig, no
settings), against the real Open WebUI, Redis and Netdata behind the test ingress."""

from __future__ import annotations

import json

import pytest

from scripts import smoke as script
from tests.testbed.real.plugin import ADMIN_PASSWORD

pytestmark = pytest.mark.timeout(600)


def argv_for(config, *extra: str) -> list[str]:
    args = ["--chat", config.chat_host, "--monitor", config.monitor_host, "--admin", config.admin_email]
    args += ["--version", config.webui_version, "--ca-bundle", config.ca_bundle, "--timeout", "20"]
    args += ["--netdata-user", config.netdata_user]
    for model in config.models:
        args += ["--model", model]
    for (host, port), (address, to_port) in config.connect_to.items():
        args += ["--resolve", f"{host}:{port}:{address}:{to_port}"]
    return [*args, *extra]


def test_the_public_checks_pass_with_just_urls_and_logins(real_stack, capsys, tmp_path):
    real_stack.forget_signins()
    config = real_stack.smoke_config()
    netdata = real_stack.plan.secrets.values["NETDATA_PASSWORD"]  # the live one (a test before may rotate it)
    environ = {"WEBUI_ADMIN_PASSWORD": ADMIN_PASSWORD, "NETDATA_PASSWORD": netdata}
    assert script.main(argv_for(config, "--json", "--junit", str(tmp_path / "smoke.xml")), environ) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["ok"] is True
    assert {c["group"] for c in report["checks"]} == {"public"}
    assert len(report["checks"]) == 6
    assert ADMIN_PASSWORD not in out
    assert netdata not in out
    assert (tmp_path / "smoke.xml").exists()


def test_a_wrong_admin_password_fails_and_missing_ones_are_a_usage_error(real_stack, capsys):
    real_stack.forget_signins()
    config = real_stack.smoke_config()
    netdata = real_stack.plan.secrets.values["NETDATA_PASSWORD"]
    wrong = {"WEBUI_ADMIN_PASSWORD": "not-the-admin-password", "NETDATA_PASSWORD": netdata}
    assert script.main(argv_for(config), wrong) == 1
    captured = capsys.readouterr()
    assert "admin sign-in lists models" in captured.out
    assert script.main(argv_for(config), {}) == 2
    assert "WEBUI_ADMIN_PASSWORD and NETDATA_PASSWORD not set" in capsys.readouterr().err
