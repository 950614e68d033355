"""Rolling K3s upgrades, run through the first server (`k3s kubectl` over SSH, so the API need not be
reachable from here): the datastore snapshot taken first, each host's Node cordoned and drained before
its K3s is replaced, Ready again at the new release (its kubelet version) before the next host, then
uncordoned.

Drain follows `kubectl drain`'s rules because it IS `kubectl drain` (K3s ships kubectl): pods are
evicted through the Eviction API, so PodDisruptionBudgets are respected; DaemonSet pods are left
alone (`--ignore-daemonsets`: their controller ignores cordons and would recreate them at once);
mirror pods cannot be evicted and are left alone; emptyDir data is scratch and goes with its pod
(`--delete-emptydir-data`); a pod no controller would recreate stops the drain (no `--force`).

Snapshot: embedded etcd (cluster-init) → `k3s etcd-snapshot save --name …` (K3s's own, into
/var/lib/rancher/k3s/server/db/snapshots); SQLite (a single server) → SQLite's online backup of
state.db (`sqlite3 .backup`, or Python's sqlite3 module), which is consistent while K3s writes —
a plain copy of state.db beside its -wal/-shm files while K3s runs is not.
"""

from __future__ import annotations

import json
import re
import shlex
import time

from ..errors import command
from .connection import Host, RemoteError

KUBECTL = "k3s kubectl"
DB_DIR = "/var/lib/rancher/k3s/server/db"
SNAPSHOT_DIR = f"{DB_DIR}/snapshots"
POLL_SECONDS = 2.0
# The label on a Node k3stack cordoned for its upgrade: only a cordon so marked is undone by k3stack.
MARK = "k3stack.dev/cordoned-for-upgrade"


_RELEASE = re.compile(r"v(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(?:\+k3s(\d+))?")


def skew_problem(installed: str, wanted: str) -> tuple[str, str] | None:
    """(problem, fix) when going from the K3s release `installed` to `wanted` is one K3s does not
    support, else None. The rules: K3s's manual-upgrade page ("the Kubernetes version skew policy
    applies. Ensure that your plan does not skip intermediate minor versions"), and no downgrade
    (Kubernetes migrates stored objects forward only; going back is a restore of the snapshot taken
    before the upgrade). Within one Kubernetes patch release, a K3s revision (+k3sN) or pre-release
    change either way is allowed. Releases that do not parse (`v1.30.5+k3s1` is the shape) are not
    judged: the installer refuses what does not exist."""
    have, want = _RELEASE.fullmatch(installed), _RELEASE.fullmatch(wanted)
    if not (have and want):
        return None
    (major, minor, patch), (to_major, to_minor, to_patch) = (
        tuple(int(x) for x in have.groups()[:3]),
        tuple(int(x) for x in want.groups()[:3]),
    )
    back = f"set K3S_VERSION={installed} (or a newer release of v{major}.{minor} or v{major}.{minor + 1})"
    if (to_major, to_minor, to_patch) < (major, minor, patch):
        return (
            f"K3S_VERSION={wanted} is older than the {installed} this host runs: K3s does not support a"
            " downgrade (Kubernetes migrates stored objects forward only)",
            f"{back}; to go back, restore the datastore snapshot taken before the upgrade"
            " (docs.k3s.io: Backup and Restore)",
        )
    if to_major != major or to_minor > minor + 1:
        return (
            f"K3S_VERSION={wanted} skips a minor release from the {installed} this host runs: K3s upgrades"
            " one Kubernetes minor version at a time (the Kubernetes version skew policy)",
            f"set K3S_VERSION to a v{major}.{minor + 1} release, run {command('bootstrap')}, then go on to {wanted}",
        )
    return None


def snapshot_name(from_version: str, to_version: str) -> str:
    """`pre-upgrade-<from>-<to>` in the characters a snapshot file name keeps (`+` → `-`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"pre-upgrade-{from_version}-{to_version}")


def snapshot_command(name: str, node: str) -> str:
    """The shell that takes the datastore snapshot on the first server and prints the file's path:
    etcd when db/etcd exists, else SQLite's online backup of db/state.db; exit 3 when there is neither
    (an external datastore), 4 when no SQLite tool is there."""
    quoted = shlex.quote(name)
    sqlite_dest = f"{SNAPSHOT_DIR}/{name}-{node}-$(date +%s).db"
    backup_py = (
        "import sqlite3, sys; d = sqlite3.connect(sys.argv[2]); sqlite3.connect(sys.argv[1]).backup(d); d.close()"
    )
    return (
        f"set -e; if [ -d {DB_DIR}/etcd ]; then "
        f"k3s etcd-snapshot save --name {quoted} >&2; "
        f"ls -t {SNAPSHOT_DIR}/{quoted}-* | head -n 1; "
        f"elif [ -f {DB_DIR}/state.db ]; then mkdir -p {SNAPSHOT_DIR}; dest={sqlite_dest}; "
        f"if command -v sqlite3 >/dev/null 2>&1; then sqlite3 {DB_DIR}/state.db \".backup '$dest'\"; "
        f'elif command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(backup_py)} {DB_DIR}/state.db "$dest"; '
        f'else exit 4; fi; chmod 600 "$dest"; echo "$dest"; '
        f"else exit 3; fi"
    )


def snapshot(host: Host, name: str, node: str, *, timeout: float) -> str:
    """Take the datastore snapshot on `host` (the first server); returns the file's path there.
    Raises RemoteError naming why, with the fix."""
    result = host.run(snapshot_command(name, node), check=False, what="the datastore snapshot", timeout=timeout)
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.exited == 3:
        raise RemoteError(
            f"{host.name}: no datastore to snapshot in {DB_DIR} (neither embedded etcd nor SQLite: an external "
            "datastore?); the upgrade was not started",
            "back up the external database yourself, then upgrade K3s by hand (one server at a time)",
        )
    if result.exited == 4:
        raise RemoteError(
            f"{host.name}: cannot snapshot {DB_DIR}/state.db: neither sqlite3 nor python3 is installed; "
            "the upgrade was not started",
            "install sqlite3 on the host (apt-get install sqlite3), then run again",
        )
    if not result.ok or not path.startswith(SNAPSHOT_DIR):
        detail = " | ".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]) or "no output"
        raise RemoteError(
            f"{host.name}: the datastore snapshot failed (exit {result.exited}): {detail}; the upgrade was not started",
            f"see journalctl -u k3s on {host.name}; free disk space in {SNAPSHOT_DIR} if it is full; then run again",
        )
    return path


def node_state(node: dict) -> tuple[bool, str, bool]:
    """(Ready, kubelet version, unschedulable) of a Node object."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
    )
    version = node.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", "")
    return ready, version, bool(node.get("spec", {}).get("unschedulable"))


def blocking_pods(pods: list[dict]) -> list[str]:
    """`namespace/name` of the pods a drain still waits for: running ones that are neither DaemonSet
    pods nor mirror pods (kubectl drain leaves both; finished pods hold nothing)."""
    left = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
            continue
        if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
            continue
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        left.append(f"{meta.get('namespace')}/{meta.get('name')}")
    return sorted(left)


def _json(result, what: str) -> dict:
    """The JSON object `k3s kubectl … -o json` printed; RemoteError when it printed something else."""
    try:
        found = json.loads(result.stdout)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise RemoteError(
            f"k3s kubectl answered no JSON object for {what} ({result.stdout.strip()[:80]!r})",
            "check that K3s runs on the first server (systemctl status k3s), then run again",
        )
    return found


def cordon(first: Host, node: str) -> bool:
    """Cordon `node` for its upgrade, labelled MARK first (so a later run knows the cordon is ours
    to undo). Returns False and changes nothing when the node is already unschedulable without
    that label: someone cordoned it on purpose, and it stays cordoned after the upgrade too."""
    quoted = shlex.quote(node)
    found = _json(first.run(f"{KUBECTL} get node {quoted} -o json", what=f"reading node {node}"), f"node {node}")
    if node_state(found)[2] and MARK not in (found.get("metadata", {}).get("labels") or {}):
        return False
    first.run(f"{KUBECTL} label node {quoted} {MARK}=true --overwrite", what=f"marking node {node}")
    first.run(f"{KUBECTL} cordon {quoted}", what=f"cordoning node {node}")
    return True


def uncordon(first: Host, node: str) -> None:
    """Undo `cordon`: schedulable again, then the label dropped (in that order: an interrupted run
    leaves the label, and the next run finishes the job)."""
    quoted = shlex.quote(node)
    first.run(f"{KUBECTL} uncordon {quoted}", what=f"uncordoning node {node}")
    first.run(f"{KUBECTL} label node {quoted} {MARK}-", what=f"unmarking node {node}")


def drain(first: Host, node: str, *, timeout: float) -> list[str]:
    """Evict the node's pods (kubectl drain's rules, see the module's doc) within `timeout` seconds;
    returns the pods evicted (`pod/<name>` as kubectl names them). A drain that cannot finish raises
    RemoteError naming the pods still there. The node stays cordoned."""
    seconds = max(int(timeout), 1)
    result = first.run(
        f"{KUBECTL} drain {shlex.quote(node)} --ignore-daemonsets --delete-emptydir-data --timeout={seconds}s",
        check=False,
        timeout=seconds + 120,
    )
    if result.ok:
        return re.findall(r"^(pod/\S+) evicted$", f"{result.stdout}\n{result.stderr}", re.MULTILINE)
    listed = first.run(f"{KUBECTL} get pods -A --field-selector spec.nodeName={shlex.quote(node)} -o json", check=False)
    try:
        pods = blocking_pods(json.loads(listed.stdout).get("items", []))
    except ValueError:
        pods = []
    why = " | ".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-2:])
    raise RemoteError(
        f"could not drain node {node} in {seconds}s; pods still on it: {', '.join(pods) or 'none listed'}"
        f" (kubectl: {why or 'no output'}); the upgrade stopped before touching it",
        f"a PodDisruptionBudget allowing no disruption or a pod no controller recreates holds it: scale up or "
        f"relax the budget, or move the pod, then run again (node {node} stays cordoned meanwhile; "
        f"`kubectl uncordon {node}` gives it back as it was)",
    )


def wait_ready(first: Host, node: str, version: str, *, timeout: float, clock=time.monotonic, sleep=time.sleep) -> None:
    """Until Node `node` is Ready reporting kubelet `version` (asked through the first server, whose API may be
    restarting: no answer counts as not yet). RemoteError after `timeout` seconds with what it last reported."""
    deadline = clock() + timeout
    last = "no answer from the API server"
    while True:
        result = first.run(f"{KUBECTL} get node {shlex.quote(node)} -o json", check=False, timeout=60)
        if result.ok:
            try:
                ready, reported, _ = node_state(json.loads(result.stdout))
            except ValueError:
                ready, reported = False, ""
            if ready and reported == version:
                return
            last = f"{'Ready' if ready else 'not Ready'} at {reported or 'an unknown version'}"
        if clock() > deadline:
            raise RemoteError(
                f"node {node} is not Ready at {version} after {timeout:.0f}s ({last}); "
                "the hosts after it were not touched",
                f"see journalctl -u k3s / k3s-agent on that host and kubectl describe node {node}; then run again "
                "(with a longer --timeout if it was only slow)",
            )
        sleep(POLL_SECONDS)
