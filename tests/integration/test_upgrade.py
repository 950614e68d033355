"""Rolling K3s upgrades by `inv bootstrap` on the bed's sshd hosts (stand-in K3s: the release is
INSTALL_K3S_VERSION, reported by the node as its kubelet version; the API server stays the bed's 1.20).

Evidence is taken from both sides: a watcher polls the Nodes through the kubeconfig every 0.2 s
(Ready, kubelet version, unschedulable) and the stand-in's unit logs say when each host's K3s started
at the new release; the snapshot file's mtime is compared with those."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import sqlite3
import threading
import time

import pytest

from k3stack import bootstrap as boot
from k3stack.kube import Kube
from tests.integration import test_bootstrap

bed = test_bootstrap.bed  # the fixture (settings for the bed's hosts, the stand-in installer), reused
nodes = test_bootstrap.nodes

pytestmark = pytest.mark.timeout(900)

A, B = "v1.35.8+k3s1", "v1.36.4+k3s1"
SNAPSHOTS = "/var/lib/rancher/k3s/server/db/snapshots"


def node_name(host) -> str:
    return host.ip.replace(".", "-")


@contextlib.contextmanager
def watching(kubeconfig):
    """Samples (time, node, Ready, kubelet version, unschedulable) and (time, Ready `web` pods) until the
    block ends; a sample the API could not answer (a server restarting) is simply missing."""
    samples: list[tuple[float, str, bool, str, bool]] = []
    pods: list[tuple[float, int]] = []  # (time, Ready pods of the Deployment `web`)
    stop = threading.Event()
    kube = Kube(str(kubeconfig), "k3stack", retries=0)

    def poll():
        while not stop.wait(0.2):
            try:
                listed = kube.list("v1", "Node")
            except Exception:  # noqa: BLE001 - the API server restarts during its host's upgrade
                continue
            now = time.time()
            with contextlib.suppress(Exception):
                pods.append((now, len(ready_pods(kube, "web"))))
            for n in listed:
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                samples.append(
                    (
                        now,
                        n["metadata"]["name"],
                        ready,
                        n["status"]["nodeInfo"]["kubeletVersion"],
                        bool(n.get("spec", {}).get("unschedulable")),
                    )
                )

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield samples, pods
    finally:
        stop.set()
        thread.join(timeout=10)


def started_at(host, unit: str, version: str) -> float:
    """When the stand-in's K3s `unit` on `host` last started at `version` (its own log line)."""
    log = host.exec(f"cat /var/log/{unit}.log")
    stamps = re.findall(rf'time="([^"]+)" level=info msg="Starting k3s (?:agent )?{re.escape(version)} ', log)
    assert stamps, f"{unit} on {host.ip} never started at {version}"
    return dt.datetime.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def first(samples, node: str, **wanted) -> float | None:
    """Time of the first sample of `node` matching ready/version/unschedulable as given."""
    keys = ("ready", "version", "unschedulable")
    for t, name, *values in samples:
        if name == node and all(wanted.get(k, v) == v for k, v in zip(keys, values, strict=True)):
            return t
    return None


def ready_pods(kube: Kube, app: str) -> list[dict]:
    return [
        p
        for p in kube.list("v1", "Pod", "default", label_selector=f"app={app}")
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
    ]


def workload(kube: Kube, app: str, *, replicas: int = 0, budget: int = 0, node: str = "", daemon: bool = False):
    """A Deployment (or a DaemonSet) of `app` in default, with a PodDisruptionBudget of minAvailable
    `budget`; waits until its pods run Ready (the node simulator runs them)."""
    template = {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}
    if node:
        template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    spec = {"selector": {"matchLabels": {"app": app}}, "template": template}
    if not daemon:
        spec["replicas"] = replicas
    kind = "DaemonSet" if daemon else "Deployment"
    meta = {"name": app, "namespace": "default"}
    kube.apply({"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}, field_manager="test")
    if budget:
        pdb = {"minAvailable": budget, "selector": {"matchLabels": {"app": app}}}
        kube.apply(
            {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget", "metadata": meta, "spec": pdb},
            field_manager="test",
        )
    deadline = time.monotonic() + 60
    while len(ready_pods(kube, app)) < (replicas or 2):
        assert time.monotonic() < deadline, f"{app}'s pods did not run"
        time.sleep(0.5)


def test_an_upgrade_snapshots_first_then_goes_one_host_at_a_time_servers_first_drained_and_ready(bed):
    b = bed(2)
    server, agent = b.hosts
    installed = b.run([server], [agent], K3S_VERSION=A)
    assert [n.action for n in installed.nodes] == ["changed", "changed"]

    kube = Kube(str(b.kubeconfig), "k3stack")
    workload(kube, "web", replicas=2, budget=1)  # evicted one at a time: the budget allows one down
    workload(kube, "logs", daemon=True)  # one pod per node, left where it is (kubectl drain --ignore-daemonsets)
    daemon_pods = sorted(p["metadata"]["uid"] for p in ready_pods(kube, "logs"))

    dry = b.run([server], [agent], options=boot.Options(timeout=120, dry_run=True), K3S_VERSION=B)
    assert [n.detail.split(";")[0] for n in dry.nodes] == [f"upgrade {A} → {B} (snapshot, then one host at a time)"] * 2
    assert server.exec("k3s --version").split()[2] == A  # a dry run touches nothing

    with watching(b.kubeconfig) as (samples, pod_samples):
        report = b.run([server], [agent], K3S_VERSION=B)
        time.sleep(0.5)
    assert [(n.host, n.action) for n in report.nodes] == [
        (f"root@{server.ip}", "changed"),
        (f"root@{agent.ip}", "changed"),
    ]
    evicted = []
    for n in report.nodes:
        found = re.match(
            rf"upgraded {re.escape(A)} → {re.escape(B)} \(drained \((\d+) pod\(s\) evicted\), Ready, "
            "uncordoned; ",
            n.detail,
        )
        assert found, n.detail
        evicted.append(int(found.group(1)))
    # web's two pods: those on the server went to the agent, then the agent's drain evicted both (its
    # own and the ones that came over); the budget held (never fewer than one web pod Ready). At least
    # two, not exactly: a replacement the scheduler placed before its cache saw the cordon lands on the
    # agent and is evicted in turn (seen once, 3, on a fresh machine under load).
    assert evicted[1] >= 2
    assert evicted[0] + evicted[1] >= 2
    assert len(ready_pods(kube, "web")) == 2
    assert min(web for _, web in pod_samples) >= 1
    assert sorted(p["metadata"]["uid"] for p in ready_pods(kube, "logs")) == daemon_pods  # DaemonSet pods stayed

    # The snapshot: a single server keeps its datastore in SQLite (db/state.db, WAL mode, written all the
    # time): SQLite's online backup into the snapshots directory, one consistent file, saved before the
    # first host restarted.
    listed = server.exec(f"ls {SNAPSHOTS}").split()
    assert [re.sub(r"-\d+\.db$", "", f) for f in listed] == [
        f"pre-upgrade-v1.35.8-k3s1-v1.36.4-k3s1-{node_name(server)}"
    ], listed
    saved = float(server.exec(f"date -r {SNAPSHOTS}/{listed[0]} +%s.%N"))
    assert server.exec(f"stat -c %a {SNAPSHOTS}/{listed[0]}").strip() == "600"
    consistent = "PRAGMA integrity_check; SELECT revisions = (SELECT COUNT(*) FROM kine) FROM standin_total;"
    assert server.exec(f"sqlite3 {SNAPSHOTS}/{listed[0]} '{consistent}'").split() == ["ok", "1"]
    assert f"{server.ip}:{SNAPSHOTS}/{listed[0]}" in b.output.getvalue()
    server_up, agent_up = started_at(server, "k3s", B), started_at(agent, "k3s-agent", B)
    assert saved < server_up < agent_up  # snapshot, then the server, then the agent

    s, a = node_name(server), node_name(agent)
    # The server was cordoned before it went down, Ready at B before anything happened to the agent.
    assert first(samples, s, unschedulable=True, version=A) is not None
    server_ready = first(samples, s, ready=True, version=B, unschedulable=False)
    agent_cordoned = first(samples, a, unschedulable=True)
    assert server_ready is not None
    assert agent_cordoned is not None
    assert server_ready < agent_cordoned < agent_up
    # The agent: still A while cordoned and drained, Ready at B while still cordoned, uncordoned after.
    assert first(samples, a, unschedulable=True, version=A) is not None
    assert first(samples, a, ready=True, version=B, unschedulable=True) is not None
    # Never two nodes cordoned at once; both schedulable, Ready, at B at the end.
    by_time: dict[float, set[str]] = {}
    for t, name, _, _, unschedulable in samples:
        if unschedulable:
            by_time.setdefault(t, set()).add(name)
    assert all(len(names) == 1 for names in by_time.values())
    assert [sample[1:] for sample in samples[-2:]] in (
        [(s, True, B, False), (a, True, B, False)],
        [(a, True, B, False), (s, True, B, False)],
    )
    assert set(nodes(b.kubeconfig).values()) == {True}

    again = b.run([server], [agent], K3S_VERSION=B)
    assert [n.action for n in again.nodes] == ["ok", "ok"]
    assert not again.changed
    assert server.exec(f"ls {SNAPSHOTS}").split() == listed  # nothing to upgrade: no new snapshot


def test_a_failed_upgrade_stops_at_that_host_and_leaves_the_rest_untouched(bed):
    b = bed(3)
    server, broken, last = b.hosts
    b.run([server], [broken, last], K3S_VERSION=A)
    broken.exec(
        "mkdir -p /etc/k3stack-testbed && echo 'Download failed: no space left on device' "
        "> /etc/k3stack-testbed/fail-install"
    )
    with pytest.raises(boot.BootstrapError) as caught:
        b.run([server], [broken, last], K3S_VERSION=B)
    assert caught.value.what == (
        f"root@{broken.ip}: the K3s installer ({B}) failed (exit 1): [ERROR]  Download failed: no space left on device"
    )
    assert caught.value.hint == "fix that, then run `inv bootstrap` again (hosts that are done are not redone)"
    output = b.output.getvalue()
    assert re.search(rf"root@{re.escape(last.ip)}\W+agent\W+skipped\W+an earlier host failed", output)
    assert server.exec("k3s --version").split()[2] == B
    assert broken.exec("k3s --version").split()[2] == A
    assert last.exec("k3s --version").split()[2] == A
    assert "Starting k3s agent v1.36.4" not in last.exec("cat /var/log/k3s-agent.log")
    kube = Kube(str(b.kubeconfig), "k3stack")
    spec = {n["metadata"]["name"]: n.get("spec", {}) for n in kube.list("v1", "Node")}
    assert spec[node_name(broken)].get("unschedulable") is True  # left cordoned: the error says how to undo
    assert not spec[node_name(last)].get("unschedulable")  # never touched

    broken.exec("rm /etc/k3stack-testbed/fail-install")
    report = b.run([server], [broken, last], K3S_VERSION=B)
    assert [n.action for n in report.nodes] == ["ok", "changed", "changed"]
    spec = {n["metadata"]["name"]: n.get("spec", {}) for n in kube.list("v1", "Node")}
    assert not any(s.get("unschedulable") for s in spec.values())


def test_a_failed_snapshot_stops_the_upgrade_before_any_host(bed):
    b = bed(1)
    host = b.hosts[0]
    b.run(K3S_VERSION=A)
    host.exec(f"rm -rf {SNAPSHOTS} && touch {SNAPSHOTS}")  # a file where the directory goes: K3s cannot save
    with pytest.raises(boot.BootstrapError) as caught:
        b.run(K3S_VERSION=B)
    assert caught.value.what.startswith(f"root@{host.ip}: the datastore snapshot failed (exit ")
    assert caught.value.what.endswith("the upgrade was not started")
    assert host.exec("k3s --version").split()[2] == A


def test_a_skipped_minor_is_refused_before_any_host_changes_dry_run_too(bed):
    b = bed(1)
    host = b.hosts[0]
    b.run(K3S_VERSION=A)
    skip = "v1.37.2+k3s1"
    for dry_run in (True, False):
        with pytest.raises(boot.BootstrapError) as caught:
            b.run(K3S_VERSION=skip, options=boot.Options(timeout=120, dry_run=dry_run))
        assert caught.value.what.startswith(f"root@{host.ip}: K3S_VERSION={skip} skips a minor release from the {A}")
        assert caught.value.hint.startswith("set K3S_VERSION to a v1.36 release, run `inv bootstrap`, then go on")
    assert host.exec("k3s --version").split()[2] == A
    assert host.exec(f"ls {SNAPSHOTS} 2>/dev/null || true").split() == []  # no snapshot: the upgrade never began
    assert [n.action for n in b.run(K3S_VERSION=A).nodes] == ["ok"]  # no lock left behind, nothing changed


def test_a_cordon_someone_made_stays_and_one_a_stopped_upgrade_left_is_given_back(bed):
    b = bed(2)
    server, agent = b.hosts
    b.run([server], [agent], K3S_VERSION=A)
    kube = Kube(str(b.kubeconfig), "k3stack")

    def cordon(node: str, labels: dict | None = None) -> None:
        body = {"spec": {"unschedulable": True}, "metadata": {"labels": labels or {}}}
        kube.request("PATCH", f"/api/v1/nodes/{node}", body=body, content_type="application/merge-patch+json")

    def state(node: str) -> tuple[bool, dict]:
        found = kube.get("v1", "Node", node)
        return bool(found.get("spec", {}).get("unschedulable")), found["metadata"].get("labels") or {}

    # Someone cordoned the agent on purpose: the upgrade drains it and leaves it cordoned, unmarked.
    cordon(node_name(agent))
    report = b.run([server], [agent], K3S_VERSION=B)
    assert "left cordoned as it was before the upgrade" in report.nodes[1].detail
    assert state(node_name(agent))[0] is True
    assert boot.upgrade.MARK not in state(node_name(agent))[1]
    assert state(node_name(server))[0] is False
    assert boot.upgrade.MARK not in state(node_name(server))[1]

    # A run that stopped after the server's upgrade but before it was Ready (here: marked and cordoned
    # as that run leaves it): the next run, with nothing to upgrade, gives it back; the agent stays.
    cordon(node_name(server), {boot.upgrade.MARK: "true"})
    again = b.run([server], [agent], K3S_VERSION=B)
    assert [n.action for n in again.nodes] == ["ok", "ok"]
    assert again.uncordoned == [node_name(server)]
    assert again.changed
    assert state(node_name(server))[0] is False
    assert boot.upgrade.MARK not in state(node_name(server))[1]
    assert state(node_name(agent))[0] is True
    assert not b.run([server], [agent], K3S_VERSION=B).changed


def test_a_drain_that_cannot_finish_stops_the_upgrade_naming_the_pod(bed):
    b = bed(2)
    server, agent = b.hosts
    b.run([server], [agent], K3S_VERSION=A)
    kube = Kube(str(b.kubeconfig), "k3stack")
    workload(kube, "solo", replicas=1, budget=1, node=node_name(server))  # a budget that allows no eviction
    with pytest.raises(boot.BootstrapError) as caught:
        b.run([server], [agent], options=boot.Options(timeout=15), K3S_VERSION=B)
    what = caught.value.what
    assert re.match(
        rf"root@{re.escape(server.ip)}: could not drain node {node_name(server)} in 15s; pods still on it: "
        r"default/solo-\S+ \(kubectl: .+\); the upgrade stopped before touching it$",
        what,
    ), what
    assert "PodDisruptionBudget" in caught.value.hint
    assert f"kubectl uncordon {node_name(server)}" in caught.value.hint
    assert server.exec("k3s --version").split()[2] == A  # not touched
    assert agent.exec("k3s --version").split()[2] == A
    assert re.search(rf"root@{re.escape(agent.ip)}\W+agent\W+skipped\W+an earlier host failed", b.output.getvalue())
    assert len(ready_pods(kube, "solo")) == 1  # the budget held


def test_backup_cluster_brings_the_datastore_snapshot_home_private(bed, tmp_path, monkeypatch):
    from k3stack import face

    b = bed(1)
    host = b.hosts[0]
    b.run(K3S_VERSION=A)
    here = tmp_path / "snapshots"
    here.mkdir()
    taken = boot.cluster_backup(b.settings(SERVERS=host.ip), boot.Options(), b.console, to=str(here))
    remote = taken.remote.split(":", 1)[1]
    assert taken.path.parent == here
    assert taken.path.name == remote.rsplit("/", 1)[1]
    assert re.fullmatch(rf"on-demand-{node_name(host)}-\d+\.db", taken.path.name)
    assert oct(taken.path.stat().st_mode & 0o777) == "0o600"
    assert taken.sha256 == host.exec(f"sha256sum {remote}").split()[0]
    assert taken.size == taken.path.stat().st_size > 0
    assert "restoring it needs the cluster's token too" in b.output.getvalue()
    with contextlib.closing(sqlite3.connect(taken.path)) as db:  # one consistent SQLite file
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert (
            db.execute("SELECT revisions FROM standin_total").fetchone()[0]
            == db.execute("SELECT COUNT(*) FROM kine").fetchone()[0]
        )
    # through the task's face: --cluster --to FILE --json, SERVERS from the environment
    monkeypatch.setenv("K3STACK_ENV_DIR", str(tmp_path / "no-env-files"))
    for key, value in {**b.environ, "SERVERS": host.ip}.items():
        monkeypatch.setenv(key, value)
    target = tmp_path / "cluster.db"
    got = face.run_backup(b.console, None, None, None, to=str(target), json=True, cluster=True)
    assert got.path == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == got.sha256
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert f'"sha256": "{got.sha256}"' in b.output.getvalue()
    with pytest.raises(boot.BootstrapError, match=r"--to .*/nowhere/x\.db: .*/nowhere is not a directory"):
        boot.cluster_backup(b.settings(SERVERS=host.ip), boot.Options(), b.console, to=str(tmp_path / "nowhere/x.db"))


def stopped_at(host, unit: str, version: str) -> float:
    """When the stand-in's K3s `unit` on `host` stopped for the last time before starting at `version`."""
    lines = host.exec(f"cat /var/log/{unit}.log").splitlines()
    starting = re.compile(rf'msg="Starting k3s (?:agent )?{re.escape(version)} ')
    start = max(i for i, line in enumerate(lines) if starting.search(line))
    stops = [line for line in lines[:start] if 'msg="k3s stopped"' in line or 'msg="k3s agent stopped"' in line]
    assert stops, f"{unit} on {host.ip} never stopped before starting at {version}"
    stamp = re.search(r'time="([^"]+)"', stops[-1]).group(1)
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def test_three_servers_upgrade_one_at_a_time_never_two_down_at_once(bed):
    b = bed(3)
    servers = list(b.hosts)
    b.run(servers, K3S_VERSION=A)
    with watching(b.kubeconfig) as (samples, _):
        report = b.run(servers, K3S_VERSION=B)
        time.sleep(0.5)
    assert [n.action for n in report.nodes] == ["changed"] * 3
    server_names = [node_name(h) for h in servers]
    # each server Ready at B (seen through the API) before the next one's K3s stopped
    for i in range(2):
        ready = first(samples, server_names[i], ready=True, version=B, unschedulable=False)
        assert ready is not None
        next_down = stopped_at(servers[i + 1], "k3s", B)
        assert ready < next_down, f"{server_names[i + 1]} went down before {server_names[i]} was back"
        assert started_at(servers[i], "k3s", B) < stopped_at(servers[i + 1], "k3s", B)
    assert all(first(samples, n, ready=True, version=B, unschedulable=False) for n in server_names)
    # cluster-init: embedded etcd, so K3s's own `k3s etcd-snapshot save` on the first server
    listed = servers[0].exec(f"ls {SNAPSHOTS}").split()
    assert [re.sub(r"-\d+$", "", f) for f in listed] == [f"pre-upgrade-v1.35.8-k3s1-v1.36.4-k3s1-{server_names[0]}"]
    assert int(servers[0].exec(f"stat -c %s {SNAPSHOTS}/{listed[0]}")) > 0
