"""The tasks as a person or CI runs them: `inv ...` in a subprocess, exit codes and output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INV = [sys.executable, "-m", "invoke"]


def inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG"))}
    return subprocess.run(
        [*INV, *args],
        cwd=REPO,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def env_dir(tmp_path):
    suffix = uuid.uuid4().hex[:6]
    path = tmp_path / "test.env"
    path.write_text(
        f"DOMAIN=203.0.113.10.sslip.io\nACME_EMAIL=ops@example.com\nSTACK_NAMESPACE=cli-{suffix}\n"
        f"MONITORING_NAMESPACE=clim-{suffix}\n"
    )
    path.chmod(0o600)
    return tmp_path


def test_menu_lists_only_real_tasks():
    listing = inv("--list").stdout
    for name in ("bootstrap", "kubeconfig", "reset", "deploy", "diff", "render", "status", "destroy", "credentials"):
        assert f"  {name} " in listing


def test_bad_settings_exit_1_with_the_problem_and_no_traceback(tmp_path):
    (tmp_path / "bad.env").write_text("DOMAIN=not a domain\nACME_EMAIL=ops@example.com\n")
    done = inv("render", "--env", "bad", env={"K3STACK_ENV_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert "DOMAIN='not a domain': expected a DNS name" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_render_redacts_secret_data_unless_asked(env_dir):
    done = inv("render", "--env", "test", env={"K3STACK_ENV_DIR": str(env_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kind: Secret" in done.stdout
    assert "POSTGRES_PASSWORD: PHJlZGFjdGVkPg==" in done.stdout  # base64 of <redacted>


def test_destroy_needs_yes():
    done = inv("destroy")
    assert done.returncode == 1
    assert "run again with --yes" in done.stdout


def test_credentials_are_refused_in_ci():
    done = inv("credentials", env={"CI": "true"})
    assert done.returncode == 1
    assert "not printed when CI=true" in done.stdout


def test_deploy_pulls_models_then_redeploy_reports_no_changes(kube, env_dir, tmp_path):
    from tests.testbed.fake_ollama import FakeOllama

    settings_text = (env_dir / "test.env").read_text()
    namespace = settings_text.split("STACK_NAMESPACE=")[1].split()[0]
    # Ollama's pods get the address of a test Ollama (speaking the real API) behind its Service.
    fake = FakeOllama({"llama3.1:8b": [300_000, 1000], "mistral:7b": [200_000]})
    server = fake.serve(kube.serve_behind_pods(namespace, {"app.kubernetes.io/name": "ollama"}, 11434))
    env = {"K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": str(kube.kubeconfig), "CI": "true"}
    try:
        first = inv("deploy", "--env", "test", "--timeout", "90", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "deployment.apps/ollama created" in first.stdout
        assert "deployment.apps/ollama (cli-" in first.stdout  # rollout progress lines
        assert "model llama3.1:8b created (" in first.stdout
        assert "2 model(s) pulled" in first.stdout
        second = inv("deploy", "--env", "test", "--json", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "==> no changes:" in second.stdout
        assert '"changed": false' in second.stdout
        assert '"action": "present"' in second.stdout
        listed = inv("models.list", "--env", "test", env=env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "mistral:7b" in listed.stdout
        status = inv("status", "--env", "test", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "deployment.apps/open-webui" in status.stdout

        junit = tmp_path / "smoke.xml"
        cluster = inv("smoke", "--env", "test", "--only", "cluster", "--junit", str(junit), env=env)
        assert cluster.returncode == 0, cluster.stdout + cluster.stderr
        assert junit.read_text().count("<testcase") >= 3
        inside = inv("smoke", "--env", "test", "--only", "in-cluster", "--timeout", "2", "--json", env=env)
        assert inside.returncode == 1, inside.stdout + inside.stderr  # Open WebUI is not served here
        assert '"ok": false' in inside.stdout
        assert "Traceback" not in inside.stdout + inside.stderr
        gone = inv("destroy", "--env", "test", "--yes", "--purge", env=env)
        assert gone.returncode == 0, gone.stdout + gone.stderr
    finally:
        server.shutdown()


def test_bootstrap_kubeconfig_and_reset_through_the_cli(ssh_hosts, tmp_path):
    from tests.testbed import standin

    hosts = ssh_hosts(1)
    host = hosts[0]
    standin.prepare_host(host)
    installer = tmp_path / "install.sh"
    installer.write_bytes(standin.installer_script())
    kubeconfig = tmp_path / "kubeconfig"
    env_file = tmp_path / "site.env"
    env_file.write_text(
        f"DOMAIN={host.ip}.sslip.io\nACME_EMAIL=ops@example.com\nSERVERS={host.sudo_user}@{host.ip}\n"
        f"SSH_KEY={hosts.client_key}\nSSH_KNOWN_HOSTS={hosts.known_hosts}\nK3S_INSTALL_URL={installer.as_uri()}\n"
        f"K3S_INSTALL_SHA256={standin.installer_sha256()}\nKUBECONFIG_PATH={kubeconfig}\n"
    )
    env = {"K3STACK_ENV_DIR": str(tmp_path), "SUDO_PASSWORD": host.sudo_password}

    refused = inv("bootstrap", "--env", "site", env={"K3STACK_ENV_DIR": str(tmp_path)})
    assert refused.returncode == 1
    assert "deploy is not root and sudo needs a password; set SUDO_PASSWORD" in refused.stdout
    assert "Traceback" not in refused.stdout + refused.stderr

    first = inv("bootstrap", "--env", "site", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(rf"{host.sudo_user}@{host.ip}\W+server\W+changed\W+installed", first.stdout), first.stdout
    assert "1 node(s) ready" in first.stdout
    assert host.sudo_password not in first.stdout + first.stderr
    second = inv("bootstrap", "--env", "site", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(rf"{host.sudo_user}@{host.ip}\W+server\W+ok\W+K3s v1.35.8\+k3s1 server, running", second.stdout)
    assert "==> no changes: 1 host(s)" in second.stdout

    kubeconfig.unlink()
    fetched = inv("kubeconfig", "--env", "site", env=env)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "current-context: k3stack" in kubeconfig.read_text()

    assert inv("reset", "--env", "site", env=env).returncode == 1  # --yes required
    reset = inv("reset", "--env", "site", "--yes", env=env)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert f"{host.sudo_user}@{host.ip} changed (server) uninstalled" in reset.stdout
    assert host.exec("ls /etc/rancher 2>/dev/null || true").strip() == ""


def test_up_runs_bootstrap_deploy_and_smoke_and_stops_at_the_failing_stage(ssh_hosts, tmp_path):
    from tests.testbed import standin

    hosts = ssh_hosts(1)
    host = hosts[0]
    standin.prepare_host(host)
    installer = tmp_path / "install.sh"
    installer.write_bytes(standin.installer_script())
    (tmp_path / "site.env").write_text(
        f"DOMAIN={host.ip}.sslip.io\nACME_EMAIL=ops@example.com\nSERVERS={host.ip}\nSSH_KEY={hosts.client_key}\n"
        f"SSH_KNOWN_HOSTS={hosts.known_hosts}\nK3S_INSTALL_URL={installer.as_uri()}\n"
        f"K3S_INSTALL_SHA256={standin.installer_sha256()}\nKUBECONFIG_PATH={tmp_path / 'kubeconfig'}\n"
        "OLLAMA_MODELS=\nSMOKE_TIMEOUT=3\n"
    )
    junit = tmp_path / "smoke.xml"
    done = inv("up", "--env", "site", "--junit", str(junit), env={"K3STACK_ENV_DIR": str(tmp_path), "CI": "true"})
    out = done.stdout + done.stderr
    # Bootstrap and deploy went through on the stand-in K3s; smoke ran and failed (no Ollama,
    # no Open WebUI, no public ingress here), so `up` exits 1 with the smoke report.
    assert "==> 1/3 bootstrap" in out
    assert "==> 2/3 deploy" in out
    assert "deployment.apps/open-webui created" in out
    assert "==> 3/3 smoke" in out
    assert done.returncode == 1, out
    assert "Traceback" not in out
    assert junit.exists()
    assert 'failures="0"' not in junit.read_text()


def test_bad_flags_and_secret_files(env_dir, tmp_path):
    bad_port = inv(
        "bootstrap", "--env", "test", "--host", "203.0.113.10", "--port", "ssh", env={"K3STACK_ENV_DIR": str(env_dir)}
    )
    assert bad_port.returncode == 1
    assert "--port ssh: not a TCP port number" in bad_port.stdout
    assert "Traceback" not in bad_port.stdout + bad_port.stderr
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "k3stack.yaml").write_text("an older render, world-readable\n")
    (out / "k3stack.yaml").chmod(0o644)
    done = inv("render", "--env", "test", "--out", str(out), "--show-secrets", env={"K3STACK_ENV_DIR": str(env_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert oct((out / "k3stack.yaml").stat().st_mode & 0o777) == "0o600"
    assert "kind: Secret" in (out / "k3stack.yaml").read_text()
