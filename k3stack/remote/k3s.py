"""K3s on one host: what it should look like (desired state), and the one operation that gets
it there — files rewritten, installer run when the release changed, K3s restarted once.

The desired state is hashed per part (release, installer, config, placed manifests) and kept
on the host; when every part matches and the service runs, the host is `ok` and nothing is
touched. The join token lives only in the 0600 config drop-in, never in argv, unit or env file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
from dataclasses import dataclass, field

import yaml

from ..errors import PROGRAM
from .connection import Host, RemoteError, https_url
from .facts import STATE_FILE, TOKEN_FILE, Facts

CONFIG_DROPIN = "/etc/rancher/k3s/config.yaml.d/50-k3stack.yaml"
MANIFEST_DIR = "/var/lib/rancher/k3s/server/manifests"
INSTALLER = "/var/lib/k3stack/install.sh"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"  # K3s imports image tarballs found here at start
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
API_PORT = 6443


def sha256(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class NodeSpec:
    """Everything one host should end up with."""

    host: Host
    role: str  # server | agent
    version: str  # v1.35.8+k3s1, or a channel name
    installer: bytes = field(repr=False)
    config: bytes = field(repr=False)  # the drop-in; holds the token
    manifests: dict[str, bytes] = field(default_factory=dict, repr=False)  # file name → content (servers)
    airgap_binary: bytes | None = field(default=None, repr=False)
    airgap_images: tuple[str, bytes] | None = field(default=None, repr=False)  # (file name, content)

    @property
    def unit(self) -> str:
        """The systemd/openrc unit K3s runs as: `k3s` on servers, `k3s-agent` on agents."""
        return "k3s" if self.role == "server" else "k3s-agent"

    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """Per-part hashes, computed once (airgap files can be hundreds of MB)."""
        return self._digests()

    def parts(self) -> dict[str, str]:
        """The desired state as {part: hash} (release, installer, config, manifests[, binary, images])."""
        return self.digests

    def _digests(self) -> dict[str, str]:
        parts = {
            "release": f"{self.role} {self.version}",
            "installer": sha256(self.installer),
            "config": sha256(self.config),
            "manifests": sha256(json.dumps({n: sha256(c) for n, c in sorted(self.manifests.items())}).encode()),
        }
        if self.airgap_binary is not None:
            parts["binary"] = sha256(self.airgap_binary)
        if self.airgap_images is not None:
            parts["images"] = sha256(self.airgap_images[1])
        return parts


@dataclass(frozen=True)
class NodeResult:
    """One host's outcome: action is ok | changed | would change | failed | skipped, with a detail for people."""

    host: str
    role: str
    action: str  # ok | changed | failed
    detail: str


def node_config(
    *,
    role: str,
    token: str,
    first_server: str | None,
    cluster_init: bool,
    node_name: str,
    tls_san: list[str],
    labels: list[str],
    taints: list[str],
    disable: list[str],
) -> bytes:
    """The K3s config drop-in (keys are K3s's flag names)."""
    config: dict = {"token": token, "node-name": node_name}
    if first_server:
        config["server"] = https_url(first_server, API_PORT)
    if role == "server":
        if cluster_init:
            config["cluster-init"] = True
        config["tls-san"] = tls_san
        config["write-kubeconfig-mode"] = "0600"
        if disable:
            config["disable"] = disable
    if labels:
        config["node-label"] = labels
    if taints and role == "agent":
        config["node-taint"] = taints
    header = f"# Written by k3stack ({PROGRAM} bootstrap); changes here are overwritten on the next run.\n"
    return (header + yaml.safe_dump(config, sort_keys=True)).encode()


def changed_parts(spec: NodeSpec, facts: Facts) -> list[str]:
    """Parts of `spec` whose hash differs from the state recorded on the host, or ["not running"]
    when all match but the unit is not active; [] means the host is `ok`."""
    stored = facts.state.get("parts", {})
    changed = [name for name, digest in spec.parts().items() if stored.get(name) != digest]
    if not changed and spec.unit not in facts.active_units:
        changed = ["not running"]
    return changed


@dataclass(frozen=True)
class NodePlan:
    """What `act` would do on one host, decided from its facts alone (pyinfra's idea: the plan
    is known before the first write, so a dry run is the plan printed).

    `changed`: the parts of the desired state that differ (release, installer, config,
    manifests, binary, images) or ["not running"]; empty → the host is `ok`."""

    spec: NodeSpec
    changed: tuple[str, ...]
    uploads: tuple[str, ...]  # paths on the host that would be written
    install: bool  # run the installer (release/installer/binary changed, or K3s absent)
    restart: bool  # restart the unit once (K3s applies a manifests-only change itself)
    first: bool  # k3stack never applied this host before
    upgrade_from: str | None = None  # the release installed now, when the run changes it (an upgrade)

    @property
    def action(self) -> str:
        """`changed` when anything would be done, else `ok`."""
        return "changed" if self.changed else "ok"

    def describe(self) -> str:
        """`would …` for a dry run: the files, the installer, the restart."""
        if not self.changed:
            return f"K3s {self.spec.version} {self.spec.role}, running"
        steps = [f"write {', '.join(self.uploads)}"] if self.uploads else []
        if self.install:
            steps.append(f"run the K3s installer ({self.spec.version})")
        if self.restart:
            steps.append(f"restart {self.spec.unit}")
        why = "not installed" if self.first else "changed: " + ", ".join(self.changed)
        if self.upgrade_from:
            why = f"upgrade {self.upgrade_from} → {self.spec.version} (snapshot, then one host at a time); {why}"
        return f"{why}; would " + ", then ".join(steps)


def plan(spec: NodeSpec, facts: Facts) -> NodePlan:
    """Decide, without touching the host, what bringing it to `spec` takes."""
    changed = changed_parts(spec, facts)
    if not changed:
        return NodePlan(spec, (), (), False, False, not facts.state)
    uploads = [CONFIG_DROPIN, *(f"{MANIFEST_DIR}/{name}" for name in spec.manifests)]
    if spec.airgap_images is not None and ("images" in changed or not facts.state):
        uploads.append(f"{IMAGES_DIR}/{spec.airgap_images[0]}")
    install = bool({"release", "installer", "binary"} & set(changed)) or not facts.k3s_version
    # K3s applies changed files in its manifests directory itself: no restart for those alone.
    restart = changed != ["manifests"] or spec.unit not in facts.active_units
    return NodePlan(
        spec, tuple(changed), tuple(uploads), install, restart, not facts.state, upgrade_from(spec, facts, install)
    )


def upgrade_from(spec: NodeSpec, facts: Facts, install: bool) -> str | None:
    """The release a host runs now when this run installs another pinned one over it (an upgrade or a
    downgrade: the rolling path either way), else None: a fresh install, the same release again, or a
    channel (whose release is only known once installed)."""
    installed = facts.k3s_version
    if not (install and installed and spec.version.startswith("v")) or installed == spec.version:
        return None
    return installed


def act(node: NodePlan, facts: Facts, *, timeout: float = 120) -> NodeResult:
    """Carry out a plan: rewrite the files, (re)install, restart once, record the desired state."""
    spec, host = node.spec, node.spec.host
    if not node.changed:
        return NodeResult(host.name, spec.role, "ok", node.describe())
    host.upload(spec.config, CONFIG_DROPIN, 0o600)
    for name, content in spec.manifests.items():
        host.upload(content, f"{MANIFEST_DIR}/{name}", 0o600)
    if spec.airgap_images is not None and f"{IMAGES_DIR}/{spec.airgap_images[0]}" in node.uploads:
        host.upload(spec.airgap_images[1], f"{IMAGES_DIR}/{spec.airgap_images[0]}", 0o644)
    if node.install:
        _install(spec)
    if node.restart:
        _restart(spec, facts, timeout)
    state = {"parts": spec.parts(), "role": spec.role}
    host.upload(json.dumps(state, sort_keys=True).encode(), STATE_FILE, 0o600)
    how = " (restarted once)" if node.restart else " (applied by K3s, no restart)"
    detail = "installed" if node.first else "changed: " + ", ".join(node.changed) + how
    if node.upgrade_from:
        detail = f"upgraded {node.upgrade_from} → {spec.version}"
    return NodeResult(host.name, spec.role, "changed", detail)


def apply(spec: NodeSpec, facts: Facts, *, timeout: float = 120) -> NodeResult:
    """Bring one host to `spec`: `ok` when nothing differs, else rewrite, (re)install, restart once."""
    return act(plan(spec, facts), facts, timeout=timeout)


def _install(spec: NodeSpec) -> None:
    host = spec.host
    host.upload(spec.installer, INSTALLER, 0o700)
    env = {
        "INSTALL_K3S_EXEC": spec.role,
        "INSTALL_K3S_SKIP_START": "true",  # k3stack restarts once itself, after every file is in place
    }
    if spec.version.startswith("v"):
        env["INSTALL_K3S_VERSION"] = spec.version
    else:
        env["INSTALL_K3S_CHANNEL"] = spec.version
    if spec.airgap_binary is not None:
        host.upload(spec.airgap_binary, "/usr/local/bin/k3s", 0o755)
        env["INSTALL_K3S_SKIP_DOWNLOAD"] = "true"
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # The installer downloads K3s (about 70 MB): more time than an ordinary command.
    host.run(f"env {assignments} sh {INSTALLER}", what=f"the K3s installer ({spec.version})", timeout=1800)


def _restart(spec: NodeSpec, facts: Facts, timeout: float) -> None:
    host, unit = spec.host, spec.unit
    restart = f"rc-service {unit} restart" if facts.init == "openrc" else f"systemctl restart {unit}"
    host.run(restart, what=f"restarting {unit}")
    listening = f"{{ ss -Hltn 2>/dev/null || netstat -ltn 2>/dev/null; }} | grep -q ':{API_PORT} '"
    ready = f"[ -f {KUBECONFIG} ] && {listening}" if spec.role == "server" else "true"
    active = f"rc-service {unit} status" if facts.init == "openrc" else f"systemctl is-active --quiet {unit}"
    waited = host.run(
        f"i=0; while [ $i -lt {int(timeout)} ]; do "
        f"if ! {active} >/dev/null 2>&1; then sleep 1; {active} >/dev/null 2>&1 || exit 3; fi; "
        f"if {ready}; then sleep 1; {active} >/dev/null 2>&1 && exit 0; fi; sleep 1; i=$((i+1)); done; exit 4",
        check=False,
        timeout=timeout * 2 + 60,  # the loop's own limit, counted in its sleeps, plus slack for slow checks
    )
    if waited.exited == 0:
        return
    # systemd's journal, else the log file openrc's service (and the test bed's shim) writes.
    log = host.run(
        f"{{ journalctl -u {unit} -n 5 --no-pager 2>/dev/null; tail -n 5 /var/log/{unit}.log 2>/dev/null; }}"
        " | grep -v '^-- No entries --$'",
        check=False,
    ).stdout.strip()
    why = "stopped" if waited.exited == 3 else f"not ready after {timeout:.0f}s"
    raise RemoteError(f"{host.name}: {unit} {why}; its log ends: {' | '.join(log.splitlines()[-3:]) or '(empty)'}")


LOCK_FILE = "/var/lib/k3stack/bootstrap.lock"
LOCK_STALE_SECONDS = 3600  # a holder that never released it (killed, lost) for this long is gone


def lock(host: Host, holder: str, *, stale_after: float = LOCK_STALE_SECONDS) -> str | None:
    """Take the host's bootstrap lock for `holder` (who@where pid N). Atomic on the host
    (noclobber). A lock older than `stale_after` seconds is taken over: returns the holder it
    replaced (for a warning), else None. Held by another live run → RemoteError naming it."""
    quoted = shlex.quote(f"{holder}")
    taken = host.run(
        f"mkdir -p {LOCK_FILE.rsplit('/', 1)[0]} && chmod 700 {LOCK_FILE.rsplit('/', 1)[0]} && "
        f'(set -C; echo "$(date +%s) "{quoted} > {LOCK_FILE}) 2>/dev/null && echo taken || '
        f"{{ echo held; cat {LOCK_FILE}; date +%s; }}",
        what="taking the bootstrap lock",
    ).stdout.split("\n")
    if taken[0].strip() == "taken":
        return None
    since_text, _, other = (taken[1] if len(taken) > 1 else "").partition(" ")
    now = int(taken[2]) if len(taken) > 2 and taken[2].strip().isdigit() else 0
    age = now - int(since_text) if since_text.isdigit() else stale_after + 1
    if age <= stale_after:
        raise RemoteError(
            f"{host.name}: another bootstrap holds {LOCK_FILE} ({other or 'unknown holder'}, for {age}s)",
            f"wait for it to finish; if that run is dead, remove {LOCK_FILE} on the host (it is taken over "
            f"after {stale_after / 60:.0f} minutes)",
        )
    host.run(f'echo "$(date +%s) "{quoted} > {LOCK_FILE}', what="taking over a stale bootstrap lock")
    return other or "unknown holder"


def unlock(host: Host) -> None:
    """Release the bootstrap lock (a host already gone keeps it until it goes stale)."""
    host.run(f"rm -f {LOCK_FILE}", check=False)


def read_token(host: Host) -> str | None:
    """The cluster's join secret from a server (the part after `::server:` of K3s's token file)."""
    raw = host.read(TOKEN_FILE)
    if raw is None:
        return None
    text = raw.decode().strip()
    return text.split("::server:", 1)[1] if "::server:" in text else text


def reset(host: Host, role: str) -> NodeResult:
    """Uninstall K3s (its own uninstall script) and forget k3stack's state on the host."""
    script = "/usr/local/bin/k3s-uninstall.sh" if role == "server" else "/usr/local/bin/k3s-agent-uninstall.sh"
    present = host.run(f"[ -x {script} ] && echo yes || echo no").stdout.strip() == "yes"
    if present:
        host.run(script, what="the K3s uninstall script")
    host.run(f"rm -rf /var/lib/k3stack {CONFIG_DROPIN}")
    return NodeResult(
        host.name, role, "changed" if present else "ok", "uninstalled" if present else "K3s not installed"
    )
