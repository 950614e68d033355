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
    assert "DOMAIN='not a domain': expected a DNS name" in done.stderr
    assert done.stdout == ""  # `inv render > file` would otherwise write the error into the file
    assert "Traceback" not in done.stdout + done.stderr


def test_render_redacts_secret_data_unless_asked(env_dir):
    done = inv("render", "--env", "test", env={"K3STACK_ENV_DIR": str(env_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kind: Secret" in done.stdout
    assert "POSTGRES_PASSWORD: PHJlZGFjdGVkPg==" in done.stdout  # base64 of <redacted>


def test_destroy_needs_yes():
    done = inv("destroy")
    assert done.returncode == 1
    assert "run again with --yes" in done.stdout + done.stderr


def test_credentials_are_refused_in_ci():
    done = inv("credentials", env={"CI": "true"})
    assert done.returncode == 1
    assert "not printed when CI=true" in done.stdout + done.stderr


def test_deploy_pulls_models_then_redeploy_reports_no_changes(kube, env_dir, tmp_path):
    from tests.testbed.fake_ollama import FakeOllama

    settings_text = (env_dir / "test.env").read_text()
    namespace = settings_text.split("STACK_NAMESPACE=")[1].split()[0]
    # Ollama's pods get the address of a test Ollama (speaking the real API) behind its Service.
    fake = FakeOllama({"llama3.1:8b": [300_000, 1000], "mistral:7b": [200_000], "nomic-embed-text:v1.5": [50_000]})
    server = fake.serve(kube.serve_behind_pods(namespace, {"app.kubernetes.io/name": "ollama"}, 11434))
    env = {"K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": str(kube.kubeconfig), "CI": "true"}
    try:
        first = inv("deploy", "--env", "test", "--timeout", "90", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "deployment.apps/ollama created" in first.stdout
        assert "deployment.apps/ollama (cli-" in first.stdout  # rollout progress lines
        assert "model llama3.1:8b created (" in first.stdout
        assert "3 model(s) pulled" in first.stdout  # the default OLLAMA_MODELS, embedding model included
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
    assert "deploy is not root and `sudo -n true` fails" in refused.stderr
    assert re.search(
        r"fix: connect as root \(SSH_USER=root\), allow passwordless sudo .* set SUDO_PASSWORD", refused.stderr
    )
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
        "SMOKE_TIMEOUT=3\n"
    )
    junit = tmp_path / "smoke.xml"
    done = inv(
        "up", "--env", "site", "--junit", str(junit), "--no-pull", env={"K3STACK_ENV_DIR": str(tmp_path), "CI": "true"}
    )
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
    assert bad_port.returncode == 2  # a bad flag value is a usage error, as --timeout x is
    assert "--port ssh: not a TCP port number" in bad_port.stderr
    assert "Traceback" not in bad_port.stdout + bad_port.stderr
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "k3stack.yaml").write_text("an older render, world-readable\n")
    (out / "k3stack.yaml").chmod(0o644)
    done = inv("render", "--env", "test", "--out", str(out), "--show-secrets", env={"K3STACK_ENV_DIR": str(env_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert oct((out / "k3stack.yaml").stat().st_mode & 0o777) == "0o600"
    assert "kind: Secret" in (out / "k3stack.yaml").read_text()


# -- the frictions a new user met (issue 10): one line each, on stderr, no traceback ------------------
def one_line_error(done: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("deploy", "--timeout", "abc"),
        ("deploy", "--timeout", "-5"),
        ("bootstrap", "--timeout", "nan"),
        ("up", "--timeout", "0"),
        ("models.pull", "--timeout", "1h"),
        ("smoke", "--timeout", "soon"),
    ],
)
def test_a_bad_number_is_a_usage_error_before_anything_happens(env_dir, args):
    done = inv(*args, "--env", "test", env={"K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": "/nonexistent"})
    one_line_error(done, 2, f"--timeout {args[-1]}: expected a number of seconds")


def test_unknown_smoke_group_is_refused_before_connecting(env_dir):
    # KUBECONFIG points nowhere: had it tried to connect, the error would be about the kubeconfig
    for args in (("smoke", "--only", "public,bogus"), ("up", "--only", "bogus", "--host", "203.0.113.9")):
        done = inv(*args, "--env", "test", env={"K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": "/nonexistent"})
        one_line_error(done, 2, "unknown group(s) bogus", "choose from cluster, in-cluster, public")


def test_missing_kubeconfig_is_named(env_dir, tmp_path):
    environ = {"K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": "/nonexistent"}
    done = inv("status", "--env", "test", env=environ)
    one_line_error(done, 1, "kubeconfig /nonexistent (from $KUBECONFIG): does not exist", "fix: ")
    done = inv("status", "--env", "test", "--kubeconfig", str(tmp_path / "nope"), env=environ)
    one_line_error(done, 1, f"kubeconfig {tmp_path / 'nope'} (from --kubeconfig): does not exist")
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nclusters: [\n")  # truncated YAML
    done = inv("status", "--env", "test", "--kubeconfig", str(broken), env=environ)
    one_line_error(done, 1, f"{broken}:3: not valid YAML", "fix: ")  # file:line (k3stack.reader)


def test_render_keeps_problems_out_of_stdout_and_says_what_it_validated(env_dir):
    done = inv("render", "--env", "test", "--validate", env={"K3STACK_ENV_DIR": str(env_dir)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("---\n")  # only YAML on stdout
    assert re.search(
        r"valid: \d+ objects checked strictly against Kubernetes 1\.\d+; \d+ custom resources", done.stderr
    )


def test_render_validate_without_the_dev_requirements_names_them(env_dir, tmp_path):
    # a module named kubernetes_validate that fails to import, first on the path: as if not installed
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "kubernetes_validate.py").write_text("raise ImportError('not installed')\n")
    environ = {"K3STACK_ENV_DIR": str(env_dir), "PYTHONPATH": str(shadow)}
    done = inv("render", "--env", "test", "--validate", env=environ)
    one_line_error(done, 1, "needs kubernetes-validate", "pip install -r requirements-dev.txt")


def test_error_lines_are_not_wrapped_in_a_terminal(env_dir):
    """Under a terminal (rich would wrap at its width) a long error stays one line, copyable."""
    import pty

    path = "/nonexistent/" + "very-long-directory-name/" * 8 + "kubeconfig"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG", "CI"))}
    environ.update({"K3STACK_ENV_DIR": str(env_dir), "COLUMNS": "60", "TERM": "xterm"})
    pid, fd = pty.fork()
    if pid == 0:  # child: inv with stdout and stderr on the terminal
        os.chdir(REPO)
        os.execve(sys.executable, [*INV, "status", "--env", "test", "--kubeconfig", path], environ)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.decode(errors="replace"))
    lines = [line for line in text.splitlines() if "error:" in line]
    assert len(lines) == 1, text
    assert path in lines[0], text


def test_ctrl_c_mid_task_says_what_it_means_and_exits_130(env_dir, tmp_path):
    """A real SIGINT while the task waits on an API server that never answers."""
    import signal
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers: the task blocks reading
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{silent.getsockname()[1]}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: not-a-secret}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG"))}
    environ["K3STACK_ENV_DIR"] = str(env_dir)
    task = subprocess.Popen(
        [*INV, "status", "--env", "test", "--kubeconfig", str(kubeconfig)],
        cwd=REPO,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a run started as a background job of a script (as a chroot harness
        # does) inherits SIGINT ignored, and an ignored Ctrl-C proves nothing
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        conn, _ = silent.accept()  # the task is now waiting on us
        time.sleep(0.5)
        task.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = task.communicate(timeout=30)
        assert time.monotonic() - started < 5
    finally:
        task.kill()
        silent.close()
    assert task.returncode == 130, out + err
    assert "error: interrupted: what finished is kept; run the same command again to converge" in err
    assert "Traceback" not in out + err
    conn.close()


def test_an_unexpected_error_is_one_line_exit_2_and_k3stack_debug_shows_the_traceback(env_dir, tmp_path):
    # a bug planted in the library: settings.load raises something no one expects
    (tmp_path / "sitecustomize.py").write_text(
        "import k3stack.settings as s\ndef load(*a, **k):\n    raise ZeroDivisionError('planted bug')\ns.load = load\n"
    )
    environ = {"K3STACK_ENV_DIR": str(env_dir), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = inv("render", "--env", "test", env=environ)
    one_line_error(done, 2, "unexpected ZeroDivisionError: planted bug", "K3STACK_DEBUG=1")
    debug = inv("render", "--env", "test", env={**environ, "K3STACK_DEBUG": "1"})
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


def test_two_deploys_at_once_take_turns_and_agree_on_every_secret(kube, env_dir):
    """Issue 14 #4: two `inv deploy` processes at once on a fresh stack — one waits for the other's
    Lease, both succeed, and the Postgres Secret and DATABASE_URL carry the same password."""
    from urllib.parse import unquote, urlsplit

    from k3stack.kube import Kube
    from k3stack.secrets import decode

    env = {"K3STACK_ENV_DIR": str(env_dir), "KUBECONFIG": str(kube.kubeconfig), "CI": "true"}
    argv = [*INV, "deploy", "--env", "test", "--no-wait", "--no-pull"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("K3STACK_", "KUBECONFIG"))}
    runs = [
        subprocess.Popen(
            argv,
            cwd=REPO,
            env={**environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
    assert sum("waiting for " in err for _, err in outputs) == 1, outputs
    namespace = (env_dir / "test.env").read_text().split("STACK_NAMESPACE=")[1].split()[0]
    client = Kube(str(kube.kubeconfig))
    password = decode(client.get("v1", "Secret", "postgres", namespace))["POSTGRES_PASSWORD"]
    url = urlsplit(decode(client.get("v1", "Secret", "open-webui", namespace))["DATABASE_URL"])
    assert unquote(url.password) == password
    assert client.get("coordination.k8s.io/v1", "Lease", "k3stack-deploy", namespace) is None  # released
    assert inv("destroy", "--env", "test", "--yes", "--purge", env=env).returncode == 0
