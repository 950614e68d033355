"""The ssh bed: hosts reached by real Fabric over real sshd, isolated from each other."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from fabric import Config, Connection, ThreadingGroup

from .local import run


def connect(hosts, host, user: str = "root") -> Connection:
    config = Config(overrides={"run": {"in_stream": False, "hide": True}, "sudo": {"password": host.sudo_password}})
    conn = Connection(
        host.ip,
        user=user,
        port=host.port,
        config=config,
        connect_timeout=5,
        connect_kwargs={"key_filename": str(hosts.client_key), "look_for_keys": False, "allow_agent": False},
    )
    conn.client.load_host_keys(str(hosts.known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def test_root_logs_in_by_key(ssh_hosts):
    hosts = ssh_hosts(1)
    with connect(hosts, hosts[0]) as conn:
        assert conn.run("id -u; hostname").stdout.split() == ["0", hosts[0].name]


def test_sudo_with_a_password_and_no_stdin(ssh_hosts):
    hosts = ssh_hosts(1)
    host = hosts[0]
    with connect(hosts, host, user=host.sudo_user) as conn:
        assert conn.run("id -un").stdout.strip() == host.sudo_user
        assert conn.run("sudo -n true", warn=True).failed  # no passwordless sudo
        assert conn.sudo("sh -c 'id -u; cat /etc/shadow >/dev/null && echo readable'").stdout.split() == [
            "0",
            "readable",
        ]


def test_unknown_host_key_is_refused(ssh_hosts, tmp_path):
    hosts = ssh_hosts(1)
    conn = connect(hosts, hosts[0])
    conn.client.get_host_keys().clear()
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        conn.open()


def test_hosts_are_isolated_from_each_other_and_this_machine(ssh_hosts):
    hosts = ssh_hosts(2)
    a, b = hosts
    marker = "/etc/rancher/k3s/isolation-marker"
    with connect(hosts, a) as conn:
        conn.run(f"mkdir -p /etc/rancher/k3s && echo {a.name} > {marker}")
        assert conn.run(f"cat {marker}").stdout.strip() == a.name
    with connect(hosts, b) as conn:
        assert conn.run(f"test -e {marker}", warn=True).failed
        assert conn.run("hostname").stdout.strip() == b.name
    assert not Path(marker).exists()
    assert a.exec(f"cat {marker}").strip() == a.name  # the host's own view, not through SSH
    assert len({h.host_key_line.split()[2] for h in hosts}) == 2  # every host its own host key


def test_command_fans_out_to_three_hosts_in_parallel(ssh_hosts):
    hosts = ssh_hosts(3)
    group = ThreadingGroup.from_connections([connect(hosts, h) for h in hosts])
    # Each host prints when it started and ended a 1 s sleep; run in parallel, all intervals overlap.
    results = group.run("date +%s.%N; sleep 1; date +%s.%N; hostname", hide=True)
    spans = {r.stdout.split()[2]: tuple(map(float, r.stdout.split()[:2])) for r in results.values()}
    assert set(spans) == {h.name for h in hosts}
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values())
    group.close()


def test_removed_hosts_leave_nothing_behind(ssh_hosts, bed_slot):
    from .hosts import HostFactory

    factory = HostFactory(bed_slot)
    (host,) = factory.create(1)
    assert host.netns in run(["ip", "netns", "list"])
    factory.remove_all()
    assert host.netns not in run(["ip", "netns", "list"])
    assert not Path(f"/proc/{host.pid}").exists()
    assert not Path(f"/proc/{host.launcher_pid}").exists()
    assert "k3stack-testbed-" + host.name not in Path("/proc/mounts").read_text()
