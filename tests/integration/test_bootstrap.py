"""inv bootstrap's library against real sshd hosts driven by real Fabric; K3s itself is the
test bed's stand-in (tests/testbed/standin: the installer's effects on the filesystem, a
systemctl shim, and a REAL kube-apiserver behind each server's address)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from k3stack import bootstrap as boot
from k3stack import settings
from k3stack.console import Console
from k3stack.kube import Kube
from k3stack.kubeconfig import KubeconfigError
from k3stack.remote import k3s
from tests.testbed import standin

pytestmark = pytest.mark.timeout(600)


class Bed:
    """Settings pointing at the bed's hosts, the stand-in installer and a private kubeconfig."""

    def __init__(self, hosts, tmp_path: Path, monkeypatch):
        self.hosts = hosts
        self.tmp = tmp_path
        installer = tmp_path / "install.sh"
        installer.write_bytes(standin.installer_script())
        self.kubeconfig = tmp_path / "kube" / "config"
        first = hosts[0].ip
        self.environ = {
            "DOMAIN": f"{first}.sslip.io",
            "ACME_EMAIL": "ops@example.com",
            "SSH_KEY": str(hosts.client_key),
            "SSH_KNOWN_HOSTS": str(hosts.known_hosts),
            "SSH_TIMEOUT": "3",
            "K3S_INSTALL_URL": installer.as_uri(),
            "K3S_INSTALL_SHA256": standin.installer_sha256(),
            "KUBECONFIG_PATH": str(self.kubeconfig),
        }
        self.output = io.StringIO()
        self.console = Console(stream=self.output, interactive=False)
        monkeypatch.delenv("CI", raising=False)

    def settings(self, **overrides):
        return settings.load(env_dir=Path("/nonexistent"), environ={**self.environ, **overrides})

    def run(self, servers=None, agents=(), *, options=None, **overrides) -> boot.Report:
        servers = servers if servers is not None else [self.hosts[0]]
        environ = {
            "SERVERS": ",".join(h.ip for h in servers),
            "AGENTS": ",".join(h.ip for h in agents),
            **overrides,
        }
        return boot.bootstrap(self.settings(**environ), options or boot.Options(timeout=120), self.console)


@pytest.fixture
def bed(ssh_hosts, tmp_path, monkeypatch):
    def make(count: int = 1, prepare: bool = True) -> Bed:
        hosts = ssh_hosts(count)
        if prepare:
            for host in hosts:
                standin.prepare_host(host)
        return Bed(hosts, tmp_path, monkeypatch)

    return make


def untouched(host) -> bool:
    """Nothing k3stack or K3s would write exists (reading facts must not create /var/lib/rancher)."""
    paths = "/etc/rancher /var/lib/rancher /var/lib/k3stack /usr/local/bin/k3s"
    return host.exec(f"ls -d {paths} 2>/dev/null || true").strip() == ""


# -- connection and preflight failures: each one line, nothing changed on any host -----------------
def test_unknown_host_key_is_refused_and_nothing_is_touched(bed):
    b = bed(1)
    b.environ["SSH_KNOWN_HOSTS"] = str(b.tmp / "empty_known_hosts")
    with pytest.raises(boot.BootstrapError, match=r"unknown host key SHA256:\S+ .*--trust-new-host-keys"):
        b.run()
    assert untouched(b.hosts[0])


def test_trusting_a_new_host_key_is_explicit_and_printed(bed):
    b = bed(1)
    known = b.tmp / "known_hosts"
    b.environ["SSH_KNOWN_HOSTS"] = str(known)
    host = b.hosts[0]
    hosts_settings = b.settings(SERVERS=host.ip)
    options = boot.Options(trust_new_host_keys=True)
    servers, _ = boot._hosts(hosts_settings, options)
    servers[0].connect()
    servers[0].close()
    expected = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=host.host_key_line, capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert servers[0].trusted_key == expected
    assert known.read_text().split()[1:] == host.host_key_line.split()[1:]


def test_changed_host_key_is_refused(bed):
    b = bed(2)
    first, other = b.hosts[0], b.hosts[1]
    forged = b.tmp / "known_hosts"
    forged.write_text(f"{first.ip} {' '.join(other.host_key_line.split()[1:])}\n")
    b.environ["SSH_KNOWN_HOSTS"] = str(forged)
    with pytest.raises(boot.BootstrapError, match=r"host key CHANGED .*ssh-keygen -R"):
        b.run()


def test_pinned_fingerprint_is_enough_without_known_hosts(bed):
    b = bed(1)
    host = b.hosts[0]
    fp = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=host.host_key_line, capture_output=True, text=True, check=True
    ).stdout.split()[1]
    b.environ["SSH_KNOWN_HOSTS"] = str(b.tmp / "none")
    servers, _ = boot._hosts(b.settings(SERVERS=host.ip, SSH_HOST_KEYS=f"{host.ip}={fp}"), boot.Options())
    servers[0].connect()
    assert servers[0].run("hostname").stdout.strip() == host.name
    servers[0].close()
    wrong = "SHA256:" + "A" * 43
    servers, _ = boot._hosts(b.settings(SERVERS=host.ip, SSH_HOST_KEYS=f"{host.ip}={wrong}"), boot.Options())
    with pytest.raises(boot.RemoteError, match="does not match the pinned"):
        servers[0].connect()


def test_wrong_key_unreachable_host_and_sudo_problems_are_one_line_each(bed, bed_slot):
    b = bed(1)
    host = b.hosts[0]
    stranger = b.tmp / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(boot.BootstrapError, match=r"SSH login refused for user root — fix: check SSH_USER/SSH_KEY"):
        b.run(SSH_KEY=str(stranger))
    nobody = str(bed_slot.allocate_ip())
    with pytest.raises(boot.BootstrapError, match=rf"root@{nobody}: .*cannot connect on port 22 .* after 3 attempts"):
        b.run(SERVERS=nobody)
    user = host.sudo_user
    refused = rf"{user} is not root and `sudo -n true` fails .* — fix: connect as root .* or set SUDO_PASSWORD"
    with pytest.raises(boot.BootstrapError, match=refused):
        b.run(SSH_USER=user)
    with pytest.raises(boot.BootstrapError, match=r"sudo refused the password for deploy — fix: correct SUDO_PASSWORD"):
        b.run(SSH_USER=user, SUDO_PASSWORD="not-the-password")
    assert untouched(host)
    assert "not-the-password" not in b.output.getvalue()


def test_an_encrypted_key_is_named_with_the_way_to_open_it_and_never_retried(bed, monkeypatch):
    b = bed(1)
    host = b.hosts[0]
    locked = b.tmp / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    # SSH_KEY is loaded before any connection: one line, the file and the fix.
    encrypted = rf"^SSH_KEY={locked}: the key is encrypted .* — fix: load it into ssh-agent \(ssh-add {locked}\)"
    with pytest.raises(boot.BootstrapError, match=encrypted):
        b.run(SSH_KEY=str(locked))
    started = time.monotonic()
    wrong = rf"^SSH_KEY={locked}: SSH_KEY_PASSPHRASE does not open this key .* — fix: set SSH_KEY_PASSPHRASE to"
    # (it was: "cannot connect on port 22 (Invalid key) after 3 attempts; fix: check the address, SSH_PORT ...")
    with pytest.raises(boot.BootstrapError, match=wrong):
        b.run(SSH_KEY=str(locked), SSH_KEY_PASSPHRASE="not the passphrase")
    assert time.monotonic() - started < 10  # no retries, no backoff
    # With its passphrase the key opens: the host then refuses it (not in authorized_keys), as it should.
    with pytest.raises(boot.BootstrapError, match=r"SSH login refused for user root"):
        b.run(SSH_KEY=str(locked), SSH_KEY_PASSPHRASE="a passphrase")
    # Without SSH_KEY paramiko opens ~/.ssh's default keys itself: the same errors, named, not retried.
    home = b.tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    default = home / ".ssh" / "id_ed25519"
    default.write_bytes(locked.read_bytes())
    default.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    started = time.monotonic()
    with pytest.raises(
        boot.BootstrapError,
        match=rf"preflight failed on root@{host.ip}: connect: SSH_KEY_PASSPHRASE does not open the SSH key "
        rf"{default} \(.*\) — fix: set SSH_KEY_PASSPHRASE to that key's passphrase",
    ):
        b.run(SSH_KEY="", SSH_KEY_PASSPHRASE="not the passphrase")
    assert time.monotonic() - started < 10
    with pytest.raises(
        boot.BootstrapError, match=rf"connect: the SSH key {default} is encrypted .* — fix: load it into ssh-agent"
    ):
        b.run(SSH_KEY="")
    assert "a passphrase" not in b.output.getvalue()
    assert untouched(host)


def test_a_host_that_stops_answering_is_named_as_stalled_not_waited_on(bed):
    b = bed(1)
    host = b.hosts[0]
    servers, _ = boot._hosts(b.settings(SERVERS=host.ip), boot.Options())
    remote = servers[0]
    remote.options = dataclasses.replace(remote.options, command_timeout=2)
    remote.connect()
    assert remote.run("echo up").stdout.strip() == "up"
    frozen = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=True)
    pids = frozen.stdout.split()
    subprocess.run(["kill", "-STOP", *pids], check=True)  # sshd and everything on the host: a black hole
    try:
        started = time.monotonic()
        with pytest.raises(boot.RemoteError, match=rf"root@{host.ip}: a command got no answer for 2s"):
            remote.run("echo still there?")
        assert time.monotonic() - started < 30
    finally:
        subprocess.run(["kill", "-CONT", *pids], check=False)
        remote.close()


def test_preflight_reports_every_problem_and_stops_before_changing_anything(bed):
    b = bed(2)
    unprepared, odd = b.hosts[0], b.hosts[1]
    unprepared.exec("rm -rf /run/systemd")  # no systemd, no openrc
    odd.exec("sed -i 's/^ID=.*/ID=plan9/; s/^ID_LIKE=.*//; s/^PRETTY_NAME=.*/PRETTY_NAME=\"Plan 9\"/' /etc/os-release")
    odd.exec("(setsid python3 -m http.server 80 --bind 0.0.0.0 >/dev/null 2>&1 &) ; sleep 1")
    with pytest.raises(
        boot.BootstrapError,
        match=r"preflight failed on root@.*: init: none \(and \d+ more problem\(s\) above\) — fix: K3s needs systemd",
    ):
        b.run(servers=[unprepared], agents=[odd])
    out = b.output.getvalue()
    assert "os" in out
    assert "Plan 9" in out
    assert "use a distribution K3s supports" in out
    assert "taken: 80" in out
    assert untouched(unprepared)
    assert untouched(odd)


def test_settings_and_installer_problems_stop_before_any_connection(bed, monkeypatch):
    b = bed(1)
    with pytest.raises(boot.BootstrapError, match=r"K3S_VERSION=stable is a channel; CI must be reproducible"):
        b.run(K3S_VERSION="stable", options=boot.Options(timeout=120, ci=True))
    with pytest.raises(boot.BootstrapError, match=r"sha256 [0-9a-f]{64} does not match K3S_INSTALL_SHA256=0{64}"):
        b.run(K3S_INSTALL_SHA256="0" * 64)
    with pytest.raises(
        boot.BootstrapError, match=r"K3S_INSTALL_SHA256 is not set: review .* \(or pass --trust-installer"
    ):
        b.run(K3S_INSTALL_SHA256="")
    with pytest.raises(boot.BootstrapError, match=r"2 servers: embedded etcd needs an odd number"):
        b.run(SERVERS=f"{b.hosts[0].ip},203.0.113.9")
    assert untouched(b.hosts[0])


def test_a_host_that_fails_to_install_is_one_line_with_a_fix_and_the_rest_is_skipped(bed):
    b = bed(2)
    server, agent = b.hosts
    failing = b.tmp / "failing-install.sh"
    failing.write_bytes(b"#!/bin/sh\necho 'curl: (6) Could not resolve host: get.k3s.io' >&2\nexit 6\n")
    with pytest.raises(boot.BootstrapError) as caught:
        b.run(
            [server],
            [agent],
            K3S_INSTALL_URL=failing.as_uri(),
            K3S_INSTALL_SHA256=hashlib.sha256(failing.read_bytes()).hexdigest(),
        )
    # (it was `host: detail` with no fix: the command's stderr says what broke, not what to do)
    assert caught.value.what == (
        f"root@{server.ip}: the K3s installer (v1.35.8+k3s1) failed (exit 6): "
        "curl: (6) Could not resolve host: get.k3s.io"
    )
    assert caught.value.hint == "fix that, then run `inv bootstrap` again (hosts that are done are not redone)"
    assert re.search(rf"root@{re.escape(agent.ip)}\W+agent\W+skipped\W+an earlier host failed", b.output.getvalue())
    assert agent.exec("ls -d /etc/rancher /usr/local/bin/k3s 2>/dev/null || true").strip() == ""  # (only its lock)


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` as a read-only file system (root writes anywhere else)."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_kubeconfig_target_bootstrap_could_not_write_stops_it_before_any_host(bed):
    """The kubeconfig is the last step: a target it cannot be merged into used to leave K3s
    installed on every host and then fail."""
    b = bed(1)
    values = b.tmp / "values.yaml"
    values.write_text("replicaCount: 1\nimage:\n  tag: latest\n")
    broken = b.tmp / "broken"
    broken.write_text("apiVersion: v1\nclusters: [\n")
    locked = b.tmp / "readonly"
    locked.mkdir()
    cases = [
        (values, None, r"values\.yaml: not a kubeconfig \(expected kind: Config\) — fix: point KUBECONFIG_PATH at"),
        (broken, None, r"broken:\d+: not valid YAML .* — fix: point KUBECONFIG_PATH at your kubeconfig"),
        (b.kubeconfig, str(b.tmp), r"^--kubeconfig=\S+: is a directory, not a file — fix: name the file itself"),
        (
            locked / "config",
            None,
            rf"^KUBECONFIG_PATH=\S+: cannot write in {locked} \(a read-only file system\) — fix: point KUBECONFIG",
        ),
    ]
    with read_only(locked):
        for target, flag, message in cases:
            options = boot.Options(timeout=120, kubeconfig_path=flag)
            with pytest.raises(KubeconfigError, match=message) as caught:
                b.run(options=options, KUBECONFIG_PATH=str(target))
            assert "\n" not in str(caught.value)
    assert untouched(b.hosts[0])
    assert values.read_text() == "replicaCount: 1\nimage:\n  tag: latest\n"  # never merged into
    assert not list(b.tmp.glob("*.bak"))


def test_reset_refuses_a_kubeconfig_it_could_not_edit_before_uninstalling_anything(bed):
    b = bed(1)
    host = b.hosts[0]
    host.exec("mkdir -p /var/lib/k3stack && echo kept > /var/lib/k3stack/marker")  # reset removes the directory
    values = b.tmp / "values.yaml"
    values.write_text("replicaCount: 1\n")
    with pytest.raises(KubeconfigError, match=r"values\.yaml: not a kubeconfig .* — fix: point KUBECONFIG_PATH at"):
        boot.reset(b.settings(SERVERS=host.ip, KUBECONFIG_PATH=str(values)), boot.Options(), b.console)
    assert host.exec("cat /var/lib/k3stack/marker").strip() == "kept"


# -- installs ----------------------------------------------------------------------------------------
def nodes(kubeconfig: Path, context: str = "k3stack") -> dict[str, bool]:
    kube = Kube(str(kubeconfig), context)
    return {
        n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in kube.list("v1", "Node")
    }


def test_single_server_installs_then_a_rerun_changes_nothing(bed):
    b = bed(1)
    host = b.hosts[0]
    report = b.run()
    assert [(n.action, n.detail) for n in report.nodes] == [("changed", "installed")]
    assert standin.restarts(host, "k3s") == 1
    # The kubeconfig works against the real API server, through the host's address.
    config = yaml.safe_load(b.kubeconfig.read_text())
    assert config["current-context"] == "k3stack"
    assert config["clusters"][0]["cluster"]["server"] == f"https://{host.ip}:6443"
    assert oct(b.kubeconfig.stat().st_mode & 0o777) == "0o600"
    assert nodes(b.kubeconfig) == {host.ip.replace(".", "-"): True}
    # Secrets stay in 0600 files; nothing of them in argv-visible places or the output.
    assert host.exec(f"stat -c %a {k3s.CONFIG_DROPIN} {k3s.MANIFEST_DIR}/k3stack-traefik-config.yaml").split() == [
        "600",
        "600",
    ]
    token = k3s.read_token(boot._hosts(b.settings(SERVERS=host.ip), boot.Options())[0][0])
    assert token
    assert token not in b.output.getvalue()
    assert token not in host.exec("cat /etc/systemd/system/k3s.service /etc/systemd/system/k3s.service.env")
    # Traefik's HelmChartConfig reached the API server (placed before first start, applied by K3s).
    kube = Kube(str(b.kubeconfig), "k3stack")
    placed = kube.get("helm.cattle.io/v1", "HelmChartConfig", "traefik", "kube-system")
    values = yaml.safe_load(placed["spec"]["valuesContent"])
    assert "--certificatesresolvers.letsencrypt.acme.email=ops@example.com" in values["additionalArguments"]
    assert "--entrypoints.web.http.redirections.entrypoint.to=websecure" in values["additionalArguments"]

    state_dir = "stat -c '%y' /var/lib/k3stack"  # a lock taken and released changes the directory's mtime
    before = host.exec(state_dir)
    again = b.run()
    assert [n.action for n in again.nodes] == ["ok"]
    assert not again.changed
    assert not again.kubeconfig.changed
    assert standin.restarts(host, "k3s") == 1
    assert host.exec(state_dir) == before  # nothing to change: nothing written on the host, not even the lock


def test_a_config_change_restarts_exactly_once_and_says_what_changed(bed):
    b = bed(1)
    host = b.hosts[0]
    b.run()
    report = b.run(K3S_NODE_LABELS="gpu=false", ACME_STAGING="true")
    assert [(n.action, n.detail) for n in report.nodes] == [("changed", "changed: config, manifests (restarted once)")]
    assert standin.restarts(host, "k3s") == 2
    assert "gpu=false" in host.exec(f"cat {k3s.CONFIG_DROPIN}")
    assert "acme-staging-v02" in host.exec(f"cat {k3s.MANIFEST_DIR}/k3stack-traefik-config.yaml")


def test_dry_run_prints_each_hosts_plan_and_touches_nothing(bed):
    b = bed(2)
    server, agent = b.hosts
    dry = boot.Options(timeout=120, dry_run=True)
    report = b.run([server], [agent], options=dry)
    assert [n.action for n in report.nodes] == ["would change", "would change"]
    assert report.nodes[0].detail == (
        f"not installed; would write {k3s.CONFIG_DROPIN}, {k3s.MANIFEST_DIR}/k3stack-traefik-config.yaml, "
        "then run the K3s installer (v1.35.8+k3s1), then restart k3s"
    )
    assert report.nodes[1].detail.endswith("then restart k3s-agent")
    assert report.changed
    assert report.kubeconfig is None
    assert untouched(server)
    assert untouched(agent)
    assert not b.kubeconfig.exists()
    assert "hosts (dry run: nothing changed)" in b.output.getvalue()

    b.run([server], [agent])
    state = server.exec("cat /var/lib/k3stack/state.json")
    assert [n.action for n in b.run([server], [agent], options=dry).nodes] == ["ok", "ok"]
    changed = b.run([server], [agent], options=dry, K3S_NODE_LABELS="gpu=false")
    assert (changed.nodes[0].action, changed.nodes[0].detail) == (
        "would change",
        f"changed: config; would write {k3s.CONFIG_DROPIN}, {k3s.MANIFEST_DIR}/k3stack-traefik-config.yaml, "
        "then restart k3s",
    )
    assert "gpu=false" not in server.exec(f"cat {k3s.CONFIG_DROPIN}")
    assert server.exec("cat /var/lib/k3stack/state.json") == state
    assert standin.restarts(server, "k3s") == 1


def test_one_bootstrap_at_a_time_per_host_and_a_stale_lock_is_taken_over(bed):
    b = bed(1)
    host = b.hosts[0]
    host.exec(f'mkdir -p /var/lib/k3stack && echo "$(date +%s) ops@laptop pid 4242" > {k3s.LOCK_FILE}')
    with pytest.raises(
        boot.BootstrapError, match=r"another bootstrap holds .*bootstrap.lock \(ops@laptop pid 4242, for"
    ):
        b.run()
    assert host.exec("ls /etc/rancher 2>/dev/null || true").strip() == ""  # refused before any change
    assert "ops@laptop pid 4242" in host.exec(f"cat {k3s.LOCK_FILE}")  # the holder's lock is left alone
    host.exec(f'echo "$(( $(date +%s) - 7200 )) ops@laptop pid 4242" > {k3s.LOCK_FILE}')  # two hours old
    report = b.run()
    assert [n.action for n in report.nodes] == ["changed"]
    assert "took over a stale bootstrap lock held by ops@laptop pid 4242" in b.output.getvalue()
    assert host.exec(f"ls {k3s.LOCK_FILE} 2>/dev/null || true").strip() == ""  # released at the end


def test_sudo_user_with_password_and_reset_leaves_the_host_clean(bed):
    b = bed(1)
    host = b.hosts[0]
    before = host.exec("ls /usr/local/bin /etc")
    report = b.run(SSH_USER=host.sudo_user, SUDO_PASSWORD=host.sudo_password)
    assert [n.action for n in report.nodes] == ["changed"]
    assert host.sudo_password not in b.output.getvalue()
    results = boot.reset(b.settings(SERVERS=host.ip, SSH_USER="root"), boot.Options(), b.console)
    assert [r.action for r in results] == ["changed"]
    assert untouched(host)
    assert host.exec("ls /usr/local/bin /etc") == before
    assert "k3stack" not in b.kubeconfig.read_text()


def test_one_server_two_agents_and_a_token_mismatch_on_join(bed):
    b = bed(3)
    server, *agents = b.hosts
    report = b.run([server], agents)
    assert sorted(n.role for n in report.nodes) == ["agent", "agent", "server"]
    assert set(nodes(b.kubeconfig).values()) == {True}
    assert len(nodes(b.kubeconfig)) == 3
    with pytest.raises(boot.BootstrapError, match=r"K3S_TOKEN differs from the token .* was initialised with"):
        b.run([server], agents, K3S_TOKEN="another-token-entirely")
    assert standin.restarts(server, "k3s") == 1


def test_three_servers_form_one_cluster(bed):
    b = bed(3)
    report = b.run(list(b.hosts))
    assert [n.role for n in report.nodes] == ["server"] * 3
    assert len(nodes(b.kubeconfig)) == 3


def test_a_san_missing_from_the_api_certificate_is_caught_before_writing(bed):
    b = bed(1)
    host = b.hosts[0]
    b.run()
    # The API endpoint moves to a name the (kept) certificate does not carry.
    with pytest.raises(KubeconfigError, match=r"k3s certificate rotate"):
        b.run(API_ENDPOINT=f"api.{host.ip}.sslip.io", K3S_TLS_SAN="")


def test_a_jump_host_carries_the_connection(bed):
    b = bed(2)
    bastion, inner = b.hosts
    servers, _ = boot._hosts(b.settings(SERVERS=inner.ip, SSH_JUMP_HOST=f"root@{bastion.ip}"), boot.Options())
    servers[0].connect()
    try:
        assert servers[0].run("hostname").stdout.strip() == inner.name
        # The inner host's sshd sees the session coming from the bastion, not from this machine.
        peers = inner.exec("ss -Htn state established '( sport = :22 )'").split()
        assert any(p.startswith(f"{bastion.ip}:") for p in peers), peers
        assert not any(p.startswith(f"{b.hosts[0].ip.rsplit('.', 1)[0]}.1:") for p in peers), peers
    finally:
        servers[0].close()


def test_passwordless_sudo_needs_no_password_setting(bed):
    b = bed(1)
    host = b.hosts[0]
    rule = "/etc/sudoers.d/k3stack-test"
    host.exec(f"echo '{host.sudo_user} ALL=(ALL) NOPASSWD:ALL' > {rule} && chmod 440 {rule}")
    report = b.run(SSH_USER=host.sudo_user)
    assert [n.action for n in report.nodes] == ["changed"]
    assert host.exec(f"stat -c '%U %a' {k3s.CONFIG_DROPIN}").strip() == "root 600"


def test_airgap_uploads_the_binary_and_images_and_skips_the_download(bed):
    b = bed(2)
    online, offline = b.hosts
    b.run([online])
    # The "k3s binary" users download once: here the stand-in's, taken from a host that has it.
    binary = b.tmp / "k3s"
    binary.write_bytes(online.exec("base64 /usr/local/bin/k3s").encode())
    # (marked, so a copy the installer downloaded or wrote itself would not pass for it)
    binary.write_bytes(base64.b64decode(binary.read_bytes()) + b"\n# airgap copy\n")
    images = b.tmp / "k3s-airgap-images-amd64.tar.zst"
    images.write_bytes(b"not really a tarball, but bytes that must arrive intact")
    airgap = {"K3S_AIRGAP_BINARY": str(binary), "K3S_AIRGAP_IMAGES": str(images)}
    report = b.run([offline], **airgap)
    assert [n.action for n in report.nodes] == ["changed"]
    landed = offline.exec(f"base64 -w0 {k3s.IMAGES_DIR}/{images.name}")
    assert base64.b64decode(landed) == images.read_bytes()
    assert offline.exec("sha256sum /usr/local/bin/k3s").split()[0] == hashlib.sha256(binary.read_bytes()).hexdigest()
    assert [n.action for n in b.run([offline], **airgap).nodes] == ["ok"]

    with pytest.raises(boot.BootstrapError, match=r"K3S_AIRGAP_BINARY=/nonexistent/k3s: cannot read it"):
        b.run([offline], K3S_AIRGAP_BINARY="/nonexistent/k3s")
    with pytest.raises(boot.BootstrapError, match="K3S_AIRGAP_IMAGES is set without K3S_AIRGAP_BINARY"):
        b.run([offline], K3S_AIRGAP_IMAGES=str(images))


@pytest.mark.parametrize("release", ["v1.31.12+k3s1", "v1.36.4+k3s1"])
def test_the_traefik_config_installs_on_traefik_v2_and_v3_releases(bed, release):
    # The stand-in's helm-controller installs the chart of the release (27.x = Traefik v2 up to
    # K3s 1.31, 34.x+ = v3 after) with our values, and crash-loops on keys that chart rejects.
    b = bed(1)
    report = b.run(K3S_VERSION=release)
    assert [n.action for n in report.nodes] == ["changed"]
    assert "helmchart.helm.cattle.io/traefik ready" in b.output.getvalue()


def test_a_traefik_config_change_alone_is_applied_by_k3s_without_a_restart(bed):
    b = bed(1)
    host = b.hosts[0]
    b.run()
    report = b.run(ACME_EMAIL="certs@example.com")
    assert [(n.action, n.detail) for n in report.nodes] == [
        ("changed", "changed: manifests (applied by K3s, no restart)")
    ]
    assert standin.restarts(host, "k3s") == 1
    # K3s (here: the stand-in's deploy controller) picked up the changed file by itself.
    kube = Kube(str(b.kubeconfig), "k3stack")
    deadline = time.monotonic() + 30
    while "certs@example.com" not in str(kube.get("helm.cattle.io/v1", "HelmChartConfig", "traefik", "kube-system")):
        assert time.monotonic() < deadline, "the new HelmChartConfig was not applied"
        time.sleep(0.5)
