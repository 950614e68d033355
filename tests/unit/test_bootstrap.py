"""Bootstrap's pure parts: inventory, rendered K3s/Traefik files, desired state, preflight rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from k3stack import bootstrap as boot
from k3stack import settings
from k3stack.remote import k3s, preflight
from k3stack.remote.connection import SshOptions, Target
from k3stack.remote.facts import Facts


def load(**environ):
    base = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}
    return settings.load(env_dir=Path("/nonexistent"), environ={**base, **environ})


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("203.0.113.10", Target("203.0.113.10", "root", 22)),
        ("ubuntu@node1.example.com:2222", Target("node1.example.com", "ubuntu", 2222)),
        ("[2001:db8::1]:2200", Target("2001:db8::1", "root", 2200)),
        ("2001:db8::1", Target("2001:db8::1", "root", 22)),
        # at the edges
        ("10.0.0.1:1", Target("10.0.0.1", "root", 1)),
        ("10.0.0.1:65535", Target("10.0.0.1", "root", 65535)),
        ("[10.0.0.1]:2200", Target("10.0.0.1", "root", 2200)),
        ("deploy@node_1.Example.com.", Target("node_1.Example.com.", "deploy", 22)),
    ],
)
def test_host_entries(entry, expected):
    assert boot.parse_target(entry, user="root", port=22, role="server") == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "no hosts: set SERVERS"),
        ({"SERVERS": "a.example.com,b.example.com"}, "2 servers: embedded etcd needs an odd number"),
    ],
)
def test_inventory_problems(environ, message):
    with pytest.raises(boot.BootstrapError, match=message):
        boot.inventory(load(**environ), boot.Options())


def test_a_host_given_twice_by_flags_is_refused():
    # The same in SERVERS/AGENTS is refused by the settings already (tests/unit/test_bad_input.py).
    options = boot.Options(hosts=("a.example.com",), agents=("root@a.example.com",))
    with pytest.raises(boot.BootstrapError, match=r"a\.example\.com is listed twice"):
        boot.inventory(load(), options)


@pytest.mark.parametrize(
    ("endpoint", "address", "port"),
    [
        ("", "203.0.113.10", 6443),
        ("10.0.0.2", "10.0.0.2", 6443),
        ("lb.example.com:443", "lb.example.com", 443),
        ("[2001:db8::1]:6443", "2001:db8::1", 6443),
    ],
)
def test_api_endpoint_is_a_host_for_the_certificate_and_a_port_to_dial(endpoint, address, port):
    loaded = load(API_ENDPOINT=endpoint)
    first = boot.parse_target("203.0.113.10", user="root", port=22, role="server")
    assert boot.api_address(loaded, first) == address
    assert boot.api_port(loaded) == port


def test_host_flags_replace_the_settings_lists():
    servers, agents = boot.inventory(load(SERVERS="a.example.com", AGENTS="b.example.com"), boot.Options(hosts=("c",)))
    assert [t.address for t in servers] == ["c"]
    assert agents == []
    with pytest.raises(boot.BootstrapError, match="--host local stands alone"):
        boot.inventory(load(), boot.Options(hosts=("local",), agents=("b",)))


def test_pinned_host_keys_must_be_fingerprints():
    opts = boot.ssh_options(load(SSH_HOST_KEYS="10.0.0.5=SHA256:abc"), boot.Options())
    assert opts.pinned == {"10.0.0.5": "SHA256:abc"}
    with pytest.raises(boot.BootstrapError, match="expected host=SHA256:<fingerprint>"):
        boot.ssh_options(load(SSH_HOST_KEYS="10.0.0.5=MD5:ab"), boot.Options())


def test_sudo_password_is_kept_out_of_reprs():
    opts = boot.ssh_options(load(SUDO_PASSWORD="hunter2-hunter2"), boot.Options())
    assert opts.sudo_password == "hunter2-hunter2"
    assert "hunter2" not in repr(opts)
    assert "hunter2" not in repr(SshOptions(sudo_password="hunter2"))


def traefik_values(**environ) -> tuple[dict, dict]:
    files = boot.traefik_manifests(load(**environ))
    assert list(files) == ["k3stack-traefik-config.yaml"]
    (obj,) = yaml.safe_load_all(files["k3stack-traefik-config.yaml"])
    return obj, yaml.safe_load(obj["spec"]["valuesContent"])


def test_traefik_config_enables_lets_encrypt_with_the_same_arguments_on_traefik_v2_and_v3():
    obj, values = traefik_values()
    assert (obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]) == (
        "HelmChartConfig",
        "traefik",
        "kube-system",
    )
    args = values["additionalArguments"]
    assert "--certificatesresolvers.letsencrypt.acme.email=ops@example.com" in args
    assert "--certificatesresolvers.letsencrypt.acme.caserver=" + boot.PRODUCTION_CA in args
    assert "--certificatesresolvers.letsencrypt.acme.httpchallenge.entrypoint=web" in args
    assert "--entrypoints.web.http.redirections.entrypoint.to=websecure" in args
    assert values["persistence"]["enabled"] is True
    # chart keys that v3 renamed (and v2 used) must not appear: they crash one or the other
    assert not {"certResolvers", "certificatesResolvers"} & set(values)
    assert "redirectTo" not in str(values)
    _, staging = traefik_values(ACME_STAGING="true", ACME_RESOLVER="le")
    assert "--certificatesresolvers.le.acme.caserver=" + boot.STAGING_CA in staging["additionalArguments"]


def config_of(**kwargs) -> dict:
    base = {
        "role": "server",
        "token": "s3cret-token-value",
        "first_server": None,
        "cluster_init": False,
        "node_name": "n1",
        "tls_san": ["203.0.113.10"],
        "labels": [],
        "taints": ["dedicated=gpu:NoSchedule"],
        "disable": [],
    }
    return yaml.safe_load(k3s.node_config(**{**base, **kwargs}))


def test_node_config_per_role():
    first = config_of(cluster_init=True)
    assert first["cluster-init"] is True
    assert first["write-kubeconfig-mode"] == "0600"
    assert "server" not in first
    assert "node-taint" not in first  # servers stay schedulable for the stack
    joining = config_of(first_server="203.0.113.10")
    assert joining["server"] == "https://203.0.113.10:6443"
    assert "cluster-init" not in joining
    agent = config_of(role="agent", first_server="203.0.113.10")
    assert agent["node-taint"] == ["dedicated=gpu:NoSchedule"]
    assert "tls-san" not in agent
    assert agent["token"] == "s3cret-token-value"


def facts(**changes) -> Facts:
    base = Facts(
        os="debian",
        os_like="",
        os_version="12",
        os_name="Debian GNU/Linux 12 (bookworm)",
        arch="x86_64",
        init="systemd",
        downloader="/usr/bin/curl",
        disk_free_gb=50,
        memory_gb=8,
        clock_skew=0.4,
        listeners={22: "sshd"},
        k3s_version="",
        active_units=(),
    )
    return dataclasses.replace(base, **changes)


def statuses(found):
    return {f.check: f.status for f in found}


def test_preflight_rules():
    assert set(statuses(preflight.check_host("h", facts(), role="server", ours=False)).values()) == {"ok"}
    bad = preflight.check_host(
        "h",
        facts(os="freebsd", arch="riscv64", init="none", downloader="", disk_free_gb=2, clock_skew=-300),
        role="server",
        ours=False,
    )
    assert statuses(bad) == {
        "os": "fail",
        "arch": "fail",
        "init": "fail",
        "downloader": "fail",
        "disk": "fail",
        "memory": "ok",
        "ports": "ok",
        "clock": "fail",
    }
    assert all(f.fix for f in bad if f.status == "fail")
    taken = facts(listeners={443: "nginx", 6443: "k3s-server"})
    assert statuses(preflight.check_host("h", taken, role="server", ours=False))["ports"] == "fail"
    assert statuses(preflight.check_host("h", facts(listeners={443: "x"}), role="server", ours=True))["ports"] == "ok"
    assert statuses(preflight.check_host("h", facts(listeners={6443: "x"}), role="agent", ours=False))["ports"] == "ok"


def test_dns_check_answers_sslip_names_without_a_query():
    assert preflight.resolve("chat.203.0.113.10.sslip.io") == ["203.0.113.10"]
    assert preflight.resolve("chat.203-0-113-10.nip.io") == ["203.0.113.10"]

    def resolver(name: str) -> list[str]:
        return {"chat.example.com": ["198.51.100.7"]}.get(name, [])

    ok = preflight.check_dns(["chat.203.0.113.10.sslip.io"], "203.0.113.10", strict=True)
    assert [f.status for f in ok] == ["ok"]
    wrong = preflight.check_dns(["chat.example.com"], "203.0.113.10", strict=False, resolver=resolver)
    assert [(f.status, f.detail) for f in wrong] == [("warn", "→ 198.51.100.7 (first server: 203.0.113.10)")]
    assert [f.status for f in preflight.check_dns(["chat.example.com"], "203.0.113.10", strict=True)] == ["fail"]


def test_desired_state_parts_decide_what_changed():
    spec = k3s.NodeSpec(None, "server", "v1.35.8+k3s1", b"installer", b"config", {"a.yaml": b"x"})
    applied = facts(state={"parts": spec.parts()}, active_units=("k3s",))
    assert k3s.changed_parts(spec, applied) == []
    assert k3s.changed_parts(dataclasses.replace(spec, config=b"other"), applied) == ["config"]
    assert k3s.changed_parts(spec, dataclasses.replace(applied, active_units=())) == ["not running"]
    upgraded = dataclasses.replace(spec, version="v1.36.4+k3s1")
    assert k3s.changed_parts(upgraded, applied) == ["release"]


@pytest.mark.parametrize(
    ("entry", "problem", "example"),
    [
        ("10.0.0.1:22x", "port '22x' is not a number", "10.0.0.2"),
        ("10.0.0.1:²", "port '²' is not a number", "10.0.0.2"),  # isdigit() says yes, int() says no
        ("10.0.0.1:", "port '' is not a number", "10.0.0.2"),
        ("[2001:db8::1]:99999", "port 99999 is out of range (1-65535)", "10.0.0.2"),
        ("10.0.0.1:0", "port 0 is out of range (1-65535)", "10.0.0.2"),
        ("10.0.0.1:65536", "port 65536 is out of range (1-65535)", "10.0.0.2"),
        ("root@:22", "no address", "10.0.0.2"),
        ("https://10.0.0.2", "a URL scheme (https://) has no place in a host entry", "10.0.0.2"),
        ("ssh://ubuntu@10.0.0.2:2222", "a URL scheme (ssh://) has no place in a host entry", "ubuntu@10.0.0.2:2222"),
        ("10.0.0.2/24", "a path ('/24') has no place in a host entry", "10.0.0.2"),
        ("@10.0.0.2", "user '' is not a login name", "10.0.0.2"),
        ("[2001:db8::1", "a bracketed address is written [address] or [address]:port", "[2001:db8::1]:22"),
        ("node one", "'node one' is not a host name or IP address", "10.0.0.2"),
        ("-oProxyCommand=x", "'-oProxyCommand=x' is not a host name or IP address", "10.0.0.2"),
    ],
)
def test_bad_host_entries_are_one_line_errors_naming_the_problem_and_the_form(entry, problem, example):
    """A --host entry is parsed here (SERVERS/AGENTS are also checked with the settings): each
    wrong part is named, never mistaken for another (`https://h` once gave "port '//h'")."""
    with pytest.raises(boot.BootstrapError) as caught:
        boot.parse_target(entry, user="root", port=22, role="server")
    assert caught.value.what == f"host {entry!r}: {problem}"
    assert caught.value.hint == f"write it as [user@]host[:port], e.g. {example}"
    assert "\n" not in str(caught.value)


def test_a_url_given_as_host_is_refused_with_the_inventory():
    with pytest.raises(boot.BootstrapError, match=r"^host 'https://10\.0\.0\.2': a URL scheme .* e\.g\. 10\.0\.0\.2$"):
        boot.inventory(load(), boot.Options(hosts=("https://10.0.0.2",)))
    with pytest.raises(boot.BootstrapError, match=r"^host '10\.0\.0\.3:0': port 0 is out of range"):
        boot.inventory(load(), boot.Options(hosts=("10.0.0.2",), agents=("10.0.0.3:0",)))


def test_joining_an_ipv6_first_server_brackets_the_address():
    assert config_of(first_server="2001:db8::1")["server"] == "https://[2001:db8::1]:6443"


def test_traefik_cannot_be_disabled_and_a_missing_ssh_key_is_named(tmp_path):
    with pytest.raises(settings.SettingsError, match="K3S_DISABLE='servicelb,traefik': expected components other"):
        load(K3S_DISABLE="servicelb,traefik")
    with pytest.raises(boot.BootstrapError, match=r"SSH_KEY=/nonexistent/id_ed25519: no such file"):
        boot.ssh_options(load(SSH_KEY="/nonexistent/id_ed25519"), boot.Options())


def test_an_installer_url_that_cannot_be_fetched_is_named():
    with pytest.raises(settings.SettingsError, match=r"K3S_INSTALL_URL='not a url': expected an https:// URL"):
        load(K3S_INSTALL_URL="not a url")  # refused with the settings, before anything is fetched
    with pytest.raises(boot.BootstrapError, match=r"K3S_INSTALL_URL=file:///nonexistent/install.sh: cannot fetch"):
        boot.fetch_installer(load(K3S_INSTALL_URL="file:///nonexistent/install.sh"), trust=True, console=None)


def test_a_host_that_cannot_be_reached_never_has_an_empty_fix():
    from k3stack.errors import RemoteError
    from k3stack.remote import preflight

    with_hint = preflight.connect_failure("root@h", RemoteError("root@h: SSH login refused", "check SSH_KEY"))
    assert (with_hint.status, with_hint.detail, with_hint.fix) == ("fail", "SSH login refused", "check SSH_KEY")
    plain = preflight.connect_failure("root@h", OSError("root@h: no route to host"))
    assert plain.detail == "no route to host"
    assert plain.fix.startswith("check that the host is reachable")


def test_a_failed_preflight_is_its_first_problem_and_that_problem_s_fix_apart():
    """The BootstrapError of a failed preflight is the house shape: the problem (and how many
    more the table shows) in `.what`, the first failure's fix in `.hint`, never "; fix:" inside."""
    from types import SimpleNamespace

    from k3stack.errors import RemoteError

    def unreachable(address: str, exc: Exception):
        def connect():
            raise exc

        target = Target(address, "root", 22)
        return SimpleNamespace(name=target.name, target=target, connect=connect, trusted_key=None)

    hosts = [
        unreachable("203.0.113.10", RemoteError("root@203.0.113.10: SSH login refused for user root", "check SSH_KEY")),
        unreachable("203.0.113.11", OSError("root@203.0.113.11: no route to host")),
    ]
    console, resolver = quiet_console(), lambda name: ["203.0.113.10"]
    for count, expected_more in ((2, " (and 1 more problem(s) above)"), (1, "")):
        with pytest.raises(boot.BootstrapError) as caught:
            boot.connect_and_check(load(), hosts[:count], boot.Options(), console, boot.Report(), resolver)
        assert caught.value.what == (
            f"preflight failed on root@203.0.113.10: connect: SSH login refused for user root{expected_more}"
        )
        assert caught.value.hint == "check SSH_KEY"
        assert str(caught.value) == f"{caught.value.what} — fix: check SSH_KEY"


def test_a_channel_is_refused_in_ci_only_and_the_face_reads_ci(monkeypatch):
    """K3s channels move: a CI run must pin a release. The library takes `ci` as a flag; the face
    sets it from CI=true|1."""
    from k3stack import face

    settings = load(K3S_VERSION="stable")
    boot.check_release(settings, ci=False)
    with pytest.raises(boot.BootstrapError, match="K3S_VERSION=stable is a channel; CI must be reproducible"):
        boot.check_release(settings, ci=True)
    for value, expected in (("true", True), ("1", True), ("", False), ("false", False)):
        monkeypatch.setenv("CI", value)
        assert face.bootstrap_options((), (), None, None, False).ci is expected


# -- the kubeconfig target is checked before any host is touched (issue 15) -----------------------
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: []
users: []
contexts: []
"""


def bad_targets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Kubeconfig targets the last step of bootstrap could not write, and what their error says."""
    values = tmp_path / "values.yaml"
    values.write_text("replicaCount: 1\nimage:\n  tag: latest\n")
    broken = tmp_path / "broken"
    broken.write_text("apiVersion: v1\nclusters: [\n")
    directory = tmp_path / "kube"
    directory.mkdir()
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return {
        "values.yaml": (values, r"values\.yaml: not a kubeconfig \(expected kind: Config\) — fix: point {setting} at"),
        "invalid YAML": (broken, r"broken:\d+: not valid YAML .*point {setting} at your kubeconfig"),
        "a directory": (directory, r"{setting}=\S+/kube: is a directory, not a file — fix: name the file itself"),
        "under a file": (not_a_dir / "config", r"{setting}=\S+: \S+/plain-file is a file, not a directory — fix:"),
        "a symlink loop": (loop, r"{setting}=\S+/loop: a symbolic link that leads nowhere .* — fix: point"),
    }


@pytest.mark.parametrize("case", ["values.yaml", "invalid YAML", "a directory", "under a file", "a symlink loop"])
@pytest.mark.parametrize("setting", ["KUBECONFIG_PATH", "--kubeconfig"])
def test_a_kubeconfig_target_that_cannot_be_written_is_refused_naming_file_and_setting(tmp_path, case, setting):
    path, message = bad_targets(tmp_path)[case]
    if setting == "KUBECONFIG_PATH":
        loaded, options = load(KUBECONFIG_PATH=str(path)), boot.Options()
    else:
        loaded, options = load(), boot.Options(kubeconfig_path=str(path))
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(boot.KubeconfigError, match=message.format(setting=setting)) as caught:
        boot.check_kubeconfig_target(loaded, options)
    assert "\n" not in str(caught.value)
    assert caught.value.hint
    assert "fix:" not in caught.value.what  # the fix is the hint, never folded into the problem
    assert (path.read_bytes() if path.is_file() else None) == before  # never written, never "repaired"


def test_an_unwritable_kubeconfig_directory_is_refused(tmp_path, monkeypatch):
    # (root may write anywhere: a real read-only directory is in tests/integration/test_bootstrap.py)
    monkeypatch.setattr(boot.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(boot.KubeconfigError) as caught:
        boot.check_kubeconfig_target(load(KUBECONFIG_PATH=str(tmp_path / "new" / "config")), boot.Options())
    assert caught.value.what == (
        f"KUBECONFIG_PATH={tmp_path}/new/config: cannot write in {tmp_path} (no permission to write there)"
    )
    assert caught.value.hint == "point KUBECONFIG_PATH at a file in a directory you can write"
    # Under the home directory it is usually a ~/.kube that `sudo cp` left to root: give it back.
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    with pytest.raises(boot.KubeconfigError, match=rf"or make {tmp_path} yours again \(sudo chown \$USER {tmp_path}\)"):
        boot.check_kubeconfig_target(load(KUBECONFIG_PATH=str(tmp_path / "config")), boot.Options())


def test_a_kubeconfig_or_a_new_file_is_a_good_target(tmp_path):
    existing = tmp_path / "config"
    existing.write_text(KUBECONFIG)
    link = tmp_path / "link"
    link.symlink_to(existing)
    empty = tmp_path / "empty"
    empty.write_text("")
    for path in (existing, link, tmp_path / "new" / "dir" / "config", empty):
        boot.check_kubeconfig_target(load(KUBECONFIG_PATH=str(path)), boot.Options())
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_reset_needs_no_kubeconfig_but_refuses_one_it_could_not_edit(tmp_path):
    (tmp_path / "plain-file").write_text("x")
    missing = load(KUBECONFIG_PATH=str(tmp_path / "plain-file" / "config"))
    boot.check_kubeconfig_target(missing, boot.Options(), create=False)  # nothing to forget: fine
    with pytest.raises(boot.KubeconfigError, match="plain-file is a file, not a directory"):
        boot.check_kubeconfig_target(missing, boot.Options())  # bootstrap would have to create it
    values = tmp_path / "values.yaml"
    values.write_text("replicaCount: 1\n")
    with pytest.raises(boot.KubeconfigError, match=r"values\.yaml: not a kubeconfig"):
        boot.check_kubeconfig_target(load(KUBECONFIG_PATH=str(values)), boot.Options(), create=False)


@pytest.fixture
def no_connections(monkeypatch):
    """Any attempt to reach a host fails the test (the bad input must be caught before)."""

    def refuse(self):
        raise AssertionError(f"connected to {self.name} before the bad input was refused")

    monkeypatch.setattr(boot.Host, "connect", refuse)


def quiet_console():
    import io

    from k3stack.console import Console

    return Console(stream=io.StringIO(), err_stream=io.StringIO(), interactive=False)


@pytest.mark.parametrize("task", ["bootstrap", "kubeconfig", "reset"])
def test_bootstrap_kubeconfig_and_reset_check_the_target_before_any_host(tmp_path, no_connections, task):
    values = tmp_path / "values.yaml"
    values.write_text("replicaCount: 1\n")
    loaded = load(SERVERS="203.0.113.9", KUBECONFIG_PATH=str(values), K3S_INSTALL_SHA256="0" * 64)
    run = {"bootstrap": boot.bootstrap, "kubeconfig": boot.kubeconfig_only, "reset": boot.reset}[task]
    with pytest.raises(boot.KubeconfigError, match=r"values\.yaml: not a kubeconfig .*fix: point KUBECONFIG_PATH"):
        run(loaded, boot.Options(), quiet_console())
    with pytest.raises(boot.KubeconfigError, match=r"--kubeconfig=\S+: is a directory"):
        run(loaded, boot.Options(kubeconfig_path=str(tmp_path)), quiet_console())


# -- a host's failure keeps its fix; none is without one ------------------------------------------
def test_a_failed_host_keeps_the_errors_own_fix_or_gets_one():
    from k3stack.errors import RemoteError

    hinted = boot._host_error("root@h", RemoteError("root@h: another bootstrap holds it", "wait for it"), "other")
    assert (hinted.what, hinted.hint) == ("root@h: another bootstrap holds it", "wait for it")
    command_failed = RemoteError("root@h: the K3s installer failed (exit 1): no space left on device")
    plain = boot._host_error("root@h", command_failed, "fix that, then run again")
    assert str(plain) == (
        "root@h: the K3s installer failed (exit 1): no space left on device — fix: fix that, then run again"
    )
    assert boot._host_error("root@h", EOFError(), "then run again").what == "root@h: EOFError"


def test_nodes_not_ready_in_time_say_where_to_look(monkeypatch):
    from k3stack import kube

    class NotReady:
        def __init__(self, *args, **kwargs):
            pass

        def list(self, api_version, kind, namespace=None):
            return [{"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}]

    monkeypatch.setattr(kube, "Kube", NotReady)
    with pytest.raises(boot.BootstrapError) as caught:
        boot.wait_for_cluster(Path("/nonexistent"), "k3stack", 2, 0, quiet_console())
    assert caught.value.what == "only 0 of 2 node(s) Ready after 0s (registered: n1)"
    assert "kubectl --context k3stack describe nodes" in caught.value.hint
    assert "journalctl -u k3s" in caught.value.hint


# -- rolling upgrades: plan, order, the per-host step -----------------------------------------------
A, B = "v1.35.8+k3s1", "v1.36.4+k3s1"


def upgrade_plan(role: str = "server", installed: str = A, wanted: str = B, host=None) -> k3s.NodePlan:
    spec = k3s.NodeSpec(host, role, wanted, b"installer", b"config", {"a.yaml": b"x"} if role == "server" else {})
    old = dataclasses.replace(spec, version=installed)
    unit = "k3s" if role == "server" else "k3s-agent"
    return k3s.plan(spec, facts(k3s_version=installed, state={"parts": old.parts()}, active_units=(unit,)))


def test_a_changed_release_over_an_installed_one_is_an_upgrade_and_says_so():
    node = upgrade_plan()
    assert node.upgrade_from == A
    assert node.changed == ("release",)
    assert node.describe().startswith(f"upgrade {A} → {B} (snapshot, then one host at a time); changed: release")
    # a fresh install, the same release, or a channel: not an upgrade (today's waves)
    spec = k3s.NodeSpec(None, "server", B, b"installer", b"config")
    assert k3s.plan(spec, facts()).upgrade_from is None
    assert upgrade_plan(installed=B).upgrade_from is None
    assert upgrade_plan(wanted="stable").upgrade_from is None
    assert "upgrade" not in k3s.plan(spec, facts()).describe()
    # a config change alone on a host at the wanted release: no installer run, no upgrade
    same = k3s.NodeSpec(None, "server", A, b"installer", b"other config")
    old = dataclasses.replace(same, config=b"config")
    assert (
        k3s.plan(same, facts(k3s_version=A, state={"parts": old.parts()}, active_units=("k3s",))).upgrade_from is None
    )


class FakeHost:
    """A host that records the commands run on it and answers `k3s kubectl get node` from a script."""

    def __init__(self, name: str, address: str, role: str, log: list, answers=None):
        self.name, self.log, self.answers = name, log, answers or {}
        self.target = boot.Target(address, "root", 22, role)

    def run(self, command, *, check=True, what="", timeout=None):
        from k3stack.remote.connection import CommandResult

        self.log.append((self.name, command))
        for needle, reply in self.answers.items():
            if needle in command:
                out = reply() if callable(reply) else reply
                return CommandResult(out, "", 0)
        return CommandResult("", "", 0)


def node_json(ready: bool, version: str) -> str:
    import json

    return json.dumps(
        {
            "status": {
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "nodeInfo": {"kubeletVersion": version},
            }
        }
    )


def test_install_waves_one_host_at_a_time_for_an_upgrade_servers_first():
    log: list = []
    servers = [FakeHost(f"root@10.0.0.{i}", f"10.0.0.{i}", "server", log) for i in (1, 2, 3)]
    agents = [FakeHost(f"root@10.0.0.{i}", f"10.0.0.{i}", "agent", log) for i in (4, 5)]
    fresh = {h.name: k3s.plan(k3s.NodeSpec(h, h.target.role, B, b"i", b"c"), facts()) for h in servers + agents}
    assert [[h.name for h in w] for w in boot.install_waves(servers, agents, fresh)] == [
        ["root@10.0.0.1"],
        ["root@10.0.0.2"],
        ["root@10.0.0.3"],
        ["root@10.0.0.4", "root@10.0.0.5"],
    ]
    upgraded = dict(fresh, **{"root@10.0.0.5": upgrade_plan("agent", host=agents[1])})
    assert boot.rolling(upgraded)
    assert not boot.rolling(fresh)
    assert [[h.name for h in w] for w in boot.install_waves(servers, agents, upgraded)] == [
        ["root@10.0.0.1"],
        ["root@10.0.0.2"],
        ["root@10.0.0.3"],
        ["root@10.0.0.4"],
        ["root@10.0.0.5"],
    ]


def upgrade_run(monkeypatch, hosts_count: int):
    """The snapshot + per-host step on fake hosts; returns (commands, step, hosts, console output)."""
    log: list = []
    versions = {}
    first_answers = {
        "etcd-snapshot": "/var/lib/rancher/k3s/server/db/snapshots/pre-upgrade-x\n",
        "get node": lambda: node_json(True, versions.get("now", A)),
    }
    hosts = [FakeHost("root@10.0.0.1", "10.0.0.1", "server", log, first_answers)]
    hosts += [FakeHost(f"root@10.0.0.{i}", f"10.0.0.{i}", "agent", log) for i in range(2, hosts_count + 1)]
    plan = {h.name: upgrade_plan(h.target.role, host=h) for h in hosts}

    def act(node, found, *, timeout):
        log.append((node.spec.host.name, "act"))
        versions["now"] = node.spec.version
        return k3s.NodeResult(node.spec.host.name, node.spec.role, "changed", f"upgraded {A} → {B}")

    monkeypatch.setattr(k3s, "act", act)
    monkeypatch.setattr(boot.upgrade, "POLL_SECONDS", 0)
    import io

    from k3stack.console import Console

    output = io.StringIO()
    console = Console(stream=output, interactive=False)
    options = boot.Options(timeout=5)
    step = boot._upgrade_step(hosts[0], hosts, plan, {h.name: facts() for h in hosts}, options, console)
    return log, step, hosts, output


def test_an_upgrade_snapshots_first_then_drains_installs_waits_for_ready_at_the_release_and_uncordons(monkeypatch):
    log, step, hosts, _ = upgrade_run(monkeypatch, 2)
    assert len(log) == 1
    assert "k3s etcd-snapshot save --name pre-upgrade-v1.35.8-k3s1-v1.36.4-k3s1" in log[0][1]
    log.clear()
    result = step(hosts[1])
    kinds = [
        c if c == "act" else next(k for k in ("cordon", "drain", "get node", "uncordon", "label") if f"l {k}" in c)
        for _, c in log
    ]
    # read the node (not cordoned by someone else), mark it ours, cordon, drain, install, Ready, uncordon, unmark
    assert kinds == ["get node", "label", "cordon", "drain", "act", "get node", "uncordon", "label"]
    assert log[1][1].endswith("label node 10-0-0-2 k3stack.dev/cordoned-for-upgrade=true --overwrite")
    assert log[-1][1].endswith("label node 10-0-0-2 k3stack.dev/cordoned-for-upgrade-")
    assert all(name == "root@10.0.0.1" for name, c in log if c != "act")  # everything through the first server
    assert "drain 10-0-0-2 --ignore-daemonsets --delete-emptydir-data --timeout=5s" in log[3][1]
    assert result.detail.startswith(f"upgraded {A} → {B} (drained (0 pod(s) evicted), Ready, uncordoned; ")


def test_a_single_node_cluster_is_not_drained_and_says_so(monkeypatch):
    log, step, hosts, output = upgrade_run(monkeypatch, 1)
    log.clear()
    step(hosts[0])
    assert not [c for _, c in log if "cordon" in c or "drain" in c]
    assert "single-node cluster is not drained (no other node for its pods to go to)" in output.getvalue()


def test_a_node_not_ready_at_the_new_release_stops_the_upgrade_naming_what_it_reports(monkeypatch):
    log: list = []
    first = FakeHost("root@10.0.0.1", "10.0.0.1", "server", log, {"get node": node_json(True, A)})
    ticks = iter(range(100))
    with pytest.raises(boot.RemoteError) as caught:
        boot.upgrade.wait_ready(first, "n1", B, timeout=3, clock=lambda: next(ticks), sleep=lambda s: None)
    assert caught.value.what.startswith(f"node n1 is not Ready at {B} after 3s (Ready at {A})")
    ready = FakeHost("root@10.0.0.1", "10.0.0.1", "server", log, {"get node": node_json(True, B)})
    boot.upgrade.wait_ready(ready, "n1", B, timeout=3, clock=lambda: 0, sleep=lambda s: None)


def test_a_drain_that_cannot_finish_names_the_pods_that_hold_it():
    import json

    from k3stack.remote import upgrade
    from k3stack.remote.connection import CommandResult

    pods = {
        "items": [
            {"metadata": {"namespace": "llm", "name": "postgres-0"}, "status": {"phase": "Running"}},
            {
                "metadata": {"namespace": "kube-system", "name": "svclb-1", "ownerReferences": [{"kind": "DaemonSet"}]},
                "status": {"phase": "Running"},
            },
            {
                "metadata": {
                    "namespace": "kube-system",
                    "name": "m",
                    "annotations": {"kubernetes.io/config.mirror": "x"},
                },
                "status": {"phase": "Running"},
            },
            {"metadata": {"namespace": "kube-system", "name": "helm-install-x"}, "status": {"phase": "Succeeded"}},
        ]
    }

    class Stuck:
        name = "root@10.0.0.1"
        stuck = True

        def run(self, command, *, check=True, what="", timeout=None):
            if "drain" in command and self.stuck:
                return CommandResult("", "error: global timeout reached: 5s", 1)
            if "drain" in command:
                return CommandResult("node/n2 cordoned\nevicting pod llm/a\npod/a evicted\npod/b evicted\n", "", 0)
            return CommandResult(json.dumps(pods), "", 0)

    with pytest.raises(upgrade.RemoteError) as caught:
        upgrade.drain(Stuck(), "n2", timeout=5)
    assert caught.value.what.startswith("could not drain node n2 in 5s; pods still on it: llm/postgres-0 (kubectl:")
    assert "PodDisruptionBudget" in caught.value.hint
    assert "kubectl uncordon n2" in caught.value.hint
    Stuck.stuck = False
    assert upgrade.drain(Stuck(), "n2", timeout=5) == ["pod/a", "pod/b"]


def test_snapshot_names_keep_to_file_name_characters_and_a_failed_snapshot_is_one_line():
    from k3stack.remote import upgrade
    from k3stack.remote.connection import CommandResult

    assert upgrade.snapshot_name(A, B) == "pre-upgrade-v1.35.8-k3s1-v1.36.4-k3s1"
    command = upgrade.snapshot_command("n", "node-1")
    assert "sqlite3 /var/lib/rancher/k3s/server/db/state.db \".backup '$dest'\"" in command
    assert command.index("db/etcd") < command.index("state.db")

    class Answer:
        name = "root@h"

        def __init__(self, exited, out="", err=""):
            self.result = CommandResult(out, err, exited)

        def run(self, command, **kwargs):
            return self.result

    for exited, text in ((3, "no datastore to snapshot"), (4, "neither sqlite3 nor python3"), (1, "snapshot failed")):
        with pytest.raises(upgrade.RemoteError, match=text):
            upgrade.snapshot(Answer(exited, err="disk full"), "n", "node-1", timeout=5)
    with pytest.raises(upgrade.RemoteError, match="snapshot failed"):
        upgrade.snapshot(Answer(0, out="somewhere else\n"), "n", "node-1", timeout=5)
    assert upgrade.snapshot(Answer(0, out=f"{upgrade.SNAPSHOT_DIR}/n-node-1-1\n"), "n", "node-1", timeout=5).endswith(
        "n-node-1-1"
    )


def test_a_node_not_ready_after_its_upgrade_says_to_uncordon_it_once_ready(monkeypatch):
    log, step, hosts, _ = upgrade_run(monkeypatch, 2)
    hosts[0].answers["get node"] = node_json(False, B)
    monkeypatch.setattr(boot.upgrade, "wait_ready", _never_ready)
    with pytest.raises(boot.RemoteError) as caught:
        step(hosts[1])
    assert caught.value.what == "node 10-0-0-2 is not Ready"
    assert caught.value.hint == "see its log; once it is Ready, a run of `inv bootstrap` uncordons node 10-0-0-2"
    assert not [c for _, c in log if "uncordon" in c]
    assert [c for _, c in log if "cordoned-for-upgrade=true" in c]  # marked: the next run knows the cordon is ours


def test_a_node_someone_cordoned_before_the_upgrade_stays_cordoned(monkeypatch):
    log, step, hosts, _ = upgrade_run(monkeypatch, 2)
    monkeypatch.setattr(boot.upgrade, "wait_ready", lambda *a, **k: None)
    cordoned = json.loads(node_json(True, A))
    cordoned["spec"] = {"unschedulable": True}
    hosts[0].answers["get node"] = lambda: json.dumps(cordoned)
    log.clear()
    result = step(hosts[1])
    assert not [c for _, c in log if "kubectl label" in c or "cordon" in c]  # neither marked nor undone
    assert "drained (0 pod(s) evicted), Ready, left cordoned as it was before the upgrade" in result.detail
    # cordoned by an earlier upgrade run (marked): ours, so cordoned again and given back
    cordoned["metadata"] = {"labels": {boot.upgrade.MARK: "true"}}
    log.clear()
    result = step(hosts[1])
    assert [c.split()[2] for _, c in log if "kubectl uncordon" in c] == ["uncordon"]
    assert "Ready, uncordoned" in result.detail


def test_nodes_a_stopped_upgrade_left_cordoned_are_given_back_once_ready():
    import io

    from k3stack.console import Console

    class Recorder:
        def __init__(self):
            self.sent = []

        def request(self, method, path, *, body=None, content_type="application/json"):
            self.sent.append((method, path, body, content_type))
            return {}

    mark = {"labels": {boot.upgrade.MARK: "true", "kubernetes.io/os": "linux"}}
    listed = [
        {**json.loads(node_json(True, B)), "metadata": {"name": "n1", **mark}},
        {**json.loads(node_json(False, B)), "metadata": {"name": "n2", **mark}},
        {**json.loads(node_json(True, B)), "metadata": {"name": "n3", "labels": {}}, "spec": {"unschedulable": True}},
    ]
    kube, out = Recorder(), io.StringIO()
    assert boot.release_marked(kube, listed, Console(stream=out, interactive=False)) == ["n1"]
    # n1 only: Ready and marked; n2 is not Ready yet; n3 was cordoned by someone else (no mark)
    assert kube.sent == [
        (
            "PATCH",
            "/api/v1/nodes/n1",
            {"spec": {"unschedulable": None}, "metadata": {"labels": {boot.upgrade.MARK: None}}},
            "application/merge-patch+json",
        )
    ]
    assert "node n2 stays cordoned: an earlier upgrade run cordoned it and it is not Ready yet" in out.getvalue()
    assert boot.Report(uncordoned=["n1"]).changed
    assert not boot.Report().changed
    # none marked: no request at all
    kube.sent.clear()
    assert boot.release_marked(kube, listed[2:], Console(stream=out, interactive=False)) == []
    assert kube.sent == []


def _never_ready(first, node, version, *, timeout):
    raise boot.RemoteError(f"node {node} is not Ready", "see its log")


@pytest.mark.parametrize(
    ("installed", "wanted"),
    [
        (A, B),  # the next minor
        (A, "v1.35.9+k3s1"),  # a newer patch
        ("v1.35.8+k3s1", "v1.35.8+k3s2"),  # a new K3s revision of the same Kubernetes release
        ("v1.35.8+k3s2", "v1.35.8+k3s1"),  # and back: the same Kubernetes release
        ("v1.35.8-rc1+k3s1", "v1.35.8+k3s1"),  # a pre-release to its release
        ("v1.34.1+k3s1", "v1.35.8+k3s1"),
        (A, "stable"),  # a channel: not judged (its release is known only once installed)
    ],
)
def test_upgrades_k3s_supports_pass(installed, wanted):
    assert boot.upgrade.skew_problem(installed, wanted) is None


@pytest.mark.parametrize(
    ("installed", "wanted", "problem", "fix"),
    [
        (
            "v1.34.6+k3s1",
            B,
            f"K3S_VERSION={B} skips a minor release from the v1.34.6+k3s1 this host runs",
            f"set K3S_VERSION to a v1.35 release, run `inv bootstrap`, then go on to {B}",
        ),
        (
            A,
            "v2.0.1+k3s1",
            "K3S_VERSION=v2.0.1+k3s1 skips a minor release",
            "set K3S_VERSION to a v1.36 release",
        ),
        (
            B,
            A,
            f"K3S_VERSION={A} is older than the {B} this host runs: K3s does not support a downgrade",
            f"set K3S_VERSION={B} (or a newer release of v1.36 or v1.37); to go back, restore the datastore snapshot",
        ),
        (
            "v1.35.8+k3s1",
            "v1.35.7+k3s3",
            "K3S_VERSION=v1.35.7+k3s3 is older than the v1.35.8+k3s1 this host runs",
            "set K3S_VERSION=v1.35.8+k3s1 (or a newer release of v1.35 or v1.36)",
        ),
    ],
)
def test_a_skipped_minor_or_a_downgrade_is_refused_with_the_release_to_go_through(installed, wanted, problem, fix):
    found = boot.upgrade.skew_problem(installed, wanted)
    assert found is not None
    assert found[0].startswith(problem)
    assert found[1].startswith(fix)


def test_check_upgrades_names_the_host_whose_upgrade_is_refused_and_that_nothing_changed():
    log: list = []
    hosts = [FakeHost(f"root@10.0.0.{i}", f"10.0.0.{i}", "server", log) for i in (1, 2)]
    fine = {h.name: upgrade_plan(host=h) for h in hosts}
    boot.check_upgrades(fine)  # A → B on both: the next minor
    # a cluster an earlier run left half-upgraded, then pointed two minors on: the host still at A is refused
    mixed = {hosts[0].name: upgrade_plan(installed=B, wanted="v1.37.1+k3s1", host=hosts[0])}
    mixed[hosts[1].name] = upgrade_plan(installed=A, wanted="v1.37.1+k3s1", host=hosts[1])
    with pytest.raises(boot.BootstrapError) as caught:
        boot.check_upgrades(mixed)
    assert caught.value.what.startswith("root@10.0.0.2: K3S_VERSION=v1.37.1+k3s1 skips a minor release from the v1.35")
    assert caught.value.what.endswith("; nothing was changed")
    assert caught.value.hint.startswith("set K3S_VERSION to a v1.36 release")
    assert not log  # judged from the plan alone: no host was asked anything


def test_airgap_files_that_cannot_be_used_are_refused_with_the_setting_and_a_fix(tmp_path):
    with pytest.raises(boot.BootstrapError) as caught:
        boot.load_airgap(load(K3S_AIRGAP_BINARY=str(tmp_path / "k3s")))
    assert caught.value.what == f"K3S_AIRGAP_BINARY={tmp_path / 'k3s'}: cannot read it (No such file or directory)"
    assert caught.value.hint == "fix the path or unset it"
    (tmp_path / "images.tar").write_bytes(b"x")
    with pytest.raises(boot.BootstrapError) as caught:
        boot.load_airgap(load(K3S_AIRGAP_IMAGES=str(tmp_path / "images.tar")))
    assert caught.value.what == "K3S_AIRGAP_IMAGES is set without K3S_AIRGAP_BINARY: an airgap install needs both"
    assert caught.value.hint.startswith("set K3S_AIRGAP_BINARY to the k3s binary of K3S_VERSION")
