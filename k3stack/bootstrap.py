"""inv bootstrap: bare hosts → a K3s cluster with Traefik + Let's Encrypt, kubeconfig brought home.

Phases, each reported: check here (settings, installer checksum, rendered Traefik config) →
connect + read facts on every host in parallel → preflight table (any failure stops before a
host is touched) → first server → other servers one by one (etcd joins) and agents in
parallel → kubeconfig (rewritten, certificate SANs checked, merged) → wait for the cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import ipaddress
import os
import re
import secrets
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from . import kubeconfig as kcfg
from . import manifests as mf
from .console import Console
from .errors import BootstrapError, KubeconfigError, command
from .remote import k3s, preflight, upgrade
from .remote.connection import Host, RemoteError, SshOptions, Target, load_key
from .remote.facts import Facts, gather
from .settings import CHANNELS, Settings, split_endpoint, split_list

STAGING_CA = "https://acme-staging-v02.api.letsencrypt.org/directory"
PRODUCTION_CA = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Options:
    """Flags of `inv bootstrap` (hosts and agents as `[user@]host[:port]` or `local`; timeout in seconds)."""

    hosts: tuple[str, ...] = ()  # --host: servers given on the command line (or "local")
    agents: tuple[str, ...] = ()
    user: str | None = None
    port: int | None = None
    trust_new_host_keys: bool = False
    trust_installer: bool = False
    strict_dns: bool = False
    timeout: float = 300
    kubeconfig_path: str | None = None
    dry_run: bool = False  # plan every host and print it; touch nothing
    ci: bool = False  # a CI run: K3s channels are refused (the face sets it from CI=true)


@dataclass
class Report:
    """What a bootstrap found and did: preflight findings, one NodeResult per host, the kubeconfig
    written, wall time (s)."""

    findings: list[preflight.Finding] = field(default_factory=list)
    nodes: list[k3s.NodeResult] = field(default_factory=list)
    kubeconfig: kcfg.WriteResult | None = None
    seconds: float = 0.0
    uncordoned: list[str] = field(default_factory=list)  # Nodes an earlier, stopped upgrade left cordoned

    @property
    def changed(self) -> bool:
        """Something was (or, in a dry run, would be) changed on a host, a Node or in the kubeconfig."""
        return (
            any(n.action in ("changed", "would change") for n in self.nodes)
            or bool(self.uncordoned)
            or bool(self.kubeconfig and self.kubeconfig.changed)
        )


# -- inventory ---------------------------------------------------------------------------------
HOST_FORM = "write it as [user@]host[:port], e.g. {example}"
_HOST_NAME = re.compile(r"(?=.{1,253}$)(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def parse_target(entry: str, *, user: str, port: int, role: str) -> Target:
    """`[user@]host[:port]` (IPv6 as [addr]:port, or bare without a port), or `local`. Raises
    BootstrapError naming the entry and what in it is wrong (a URL scheme, a path, a port that is
    not 1-65535, an address that is no host name or IP), with the form to write."""
    if entry == "local":
        return Target("local", os.environ.get("USER", "root"), 0, role)

    def bad(problem: str, example: str = "") -> BootstrapError:
        return BootstrapError(f"host {entry!r}: {problem}", HOST_FORM.format(example=example or "10.0.0.2"))

    text = entry
    if scheme := _SCHEME.match(text):
        text = text[scheme.end() :]
        raise bad(f"a URL scheme ({scheme.group(0)}) has no place in a host entry", text.split("/")[0])
    if "/" in text:
        raise bad(f"a path ({text[text.index('/') :]!r}) has no place in a host entry", text.split("/")[0])
    if "@" in text:
        user, text = text.rsplit("@", 1)
        if not user or any(c in user for c in "@: "):
            raise bad(f"user {user!r} is not a login name")
    port_text = None
    if text.startswith("["):
        address, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise bad("a bracketed address is written [address] or [address]:port", "[2001:db8::1]:22")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        address, port_text = text.split(":")
    else:
        address = text
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()):
            raise bad(f"port {port_text!r} is not a number")
        if not 0 < int(port_text) < 65536:
            raise bad(f"port {port_text} is out of range (1-65535)")
        port = int(port_text)
    if not address:
        raise bad("no address")
    if not (_is_ip(address) or (":" not in address and _HOST_NAME.fullmatch(address))):
        raise bad(f"{address!r} is not a host name or IP address")
    return Target(address, user, port, role)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def inventory(settings: Settings, options: Options) -> tuple[list[Target], list[Target]]:
    """(servers, agents) from --host/--agent or SERVERS/AGENTS. Raises BootstrapError: no host, an even
    server count (etcd quorum needs 1, 3, 5), a host listed twice, `local` beside other hosts."""
    user = options.user or settings["SSH_USER"]
    port = options.port or int(settings["SSH_PORT"])
    server_entries = list(options.hosts) or split_list(settings["SERVERS"])
    agent_entries = list(options.agents) or ([] if options.hosts else split_list(settings["AGENTS"]))
    if not server_entries:
        raise BootstrapError("no hosts: set SERVERS in env/<name>.env (e.g. SERVERS=root@203.0.113.10) or pass --host")
    servers = [parse_target(e, user=user, port=port, role="server") for e in server_entries]
    agents = [parse_target(e, user=user, port=port, role="agent") for e in agent_entries]
    if any(t.local for t in servers + agents) and len(servers) + len(agents) > 1:
        raise BootstrapError("--host local stands alone: it makes this machine a single-server cluster")
    if len(servers) % 2 == 0:
        raise BootstrapError(
            f"SERVERS lists {len(servers)} servers: embedded etcd needs an odd number (1, 3, 5) to keep quorum"
        )
    seen = [t.address for t in servers + agents]
    duplicates = sorted({a for a in seen if seen.count(a) > 1})
    if duplicates:
        raise BootstrapError(f"host {duplicates[0]} is listed twice in SERVERS/AGENTS; list each host once")
    return servers, agents


def ssh_options(settings: Settings, options: Options) -> SshOptions:
    """SshOptions from the settings: key (loaded here, before any connection), known_hosts, pinned
    SHA256 fingerprints (SSH_HOST_KEYS), jump host, connect timeout (s), sudo password. Raises
    BootstrapError for a malformed pin, and for a key file that is missing, is not a private key,
    or is encrypted and neither SSH_KEY_PASSPHRASE nor a running ssh-agent can open it."""
    pinned = {}
    for item in split_list(settings["SSH_HOST_KEYS"]):
        host, _, print_ = item.partition("=")
        if not print_.startswith("SHA256:"):
            raise BootstrapError(f"SSH_HOST_KEYS entry {item!r}: expected host=SHA256:<fingerprint> (ssh-keygen -lf)")
        pinned[host] = print_
    jump = settings["SSH_JUMP_HOST"]
    key = settings["SSH_KEY"]
    if key and not Path(key).expanduser().is_file():
        raise BootstrapError(f"SSH_KEY={key}: no such file; point it at your private key, or unset it to use ssh-agent")
    passphrase = settings.secrets.get("SSH_KEY_PASSPHRASE", "")
    try:
        loaded = load_key(key, passphrase) if key else None
    except RemoteError as exc:
        raise BootstrapError(exc.what, exc.hint) from None
    return SshOptions(
        key_file=key,
        key=loaded,
        known_hosts=settings["SSH_KNOWN_HOSTS"],
        pinned=pinned,
        jump=parse_target(jump, user=settings["SSH_USER"], port=22, role="jump") if jump else None,
        timeout=float(settings["SSH_TIMEOUT"]),
        sudo_password=settings.secrets.get("SUDO_PASSWORD", ""),
        key_passphrase=passphrase,
        trust_new_keys=options.trust_new_host_keys,
    )


# -- local checks --------------------------------------------------------------------------------
def check_release(settings: Settings, *, ci: bool) -> None:
    """Refuse a K3s channel (stable, latest, …) in a CI run (`ci`, the face's reading of CI=true):
    CI runs must be reproducible. Raises BootstrapError."""
    if settings["K3S_VERSION"] in CHANNELS and ci:
        raise BootstrapError(
            f"K3S_VERSION={settings['K3S_VERSION']} is a channel; CI must be reproducible: "
            "pin a release such as v1.35.8+k3s1"
        )


def kubeconfig_path(settings: Settings, options: Options) -> Path:
    """Where the cluster's kubeconfig is merged: --kubeconfig, else KUBECONFIG_PATH (~ expanded)."""
    return Path(options.kubeconfig_path or settings["KUBECONFIG_PATH"]).expanduser()


def check_kubeconfig_target(settings: Settings, options: Options, *, create: bool = True) -> None:
    """Refuse, before any host is touched, a kubeconfig target the last step could not write:
    a directory, a file that is not a kubeconfig (not UTF-8, not YAML, a mapping without
    `kind: Config` such as a values.yaml — never merged into), or one in a directory this user
    cannot write (or under a file). `create`: a missing file will be created (bootstrap);
    otherwise (reset) a missing file needs nothing. Raises KubeconfigError naming the file and
    the setting (KUBECONFIG_PATH or --kubeconfig)."""
    named = options.kubeconfig_path or settings["KUBECONFIG_PATH"]
    setting = "--kubeconfig" if options.kubeconfig_path else "KUBECONFIG_PATH"
    path = kubeconfig_path(settings, options)
    fix = f"point {setting} at your kubeconfig, or at a file that does not exist yet ({command('bootstrap')} makes it)"
    try:
        real = path.resolve() if path.is_symlink() else path  # kubeconfig.write updates a link's target
    except (OSError, RuntimeError):
        raise KubeconfigError(f"{setting}={named}: a symbolic link that leads nowhere (a loop)", fix) from None
    if real.is_dir():
        raise KubeconfigError(
            f"{setting}={named}: is a directory, not a file", f"name the file itself, e.g. {named.rstrip('/')}/config"
        )
    if real.exists():
        kcfg.check_file(real, fix=fix)
    elif not create:
        return
    parent = real.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KubeconfigError(f"{setting}={named}: {parent} is a file, not a directory", fix)
    if not os.access(parent, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        hint = f"point {setting} at a file in a directory you can write"
        if not read_only and (parent == Path.home() or Path.home() in parent.parents):
            hint += f", or make {parent} yours again (sudo chown $USER {parent})"  # a `sudo cp` left it root's
        raise KubeconfigError(
            f"{setting}={named}: cannot write in {parent} "
            f"({'a read-only file system' if read_only else 'no permission to write there'})",
            hint,
        )


def fetch_installer(settings: Settings, *, trust: bool, console: Console) -> bytes:
    """The installer script from its pinned URL, verified against K3S_INSTALL_SHA256."""
    url = settings["K3S_INSTALL_URL"]
    parts = urllib.parse.urlsplit(url)
    url = urllib.parse.urlunsplit(parts._replace(path=urllib.parse.quote(parts.path)))
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            data = reply.read()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise BootstrapError(
            f"K3S_INSTALL_URL={url}: cannot fetch the installer ({exc or type(exc).__name__}); "
            "check the URL and network"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    expected = settings["K3S_INSTALL_SHA256"]
    if expected and digest != expected:
        raise BootstrapError(
            f"K3S_INSTALL_URL={url}: sha256 {digest} does not match K3S_INSTALL_SHA256={expected}; "
            "the script changed — review it, then pin the new checksum"
        )
    if not expected:
        if not trust:
            raise BootstrapError(
                f"K3S_INSTALL_SHA256 is not set: review {url}, then pin K3S_INSTALL_SHA256={digest} "
                "(or pass --trust-installer once to use it as is)"
            )
        console.warn(f"trusting the installer at {url} unpinned: sha256 {digest} — pin it as K3S_INSTALL_SHA256")
    return data


def traefik_manifests(settings: Settings) -> dict[str, bytes]:
    """k8s/k3s/*.yaml rendered for this cluster: the files placed in every server's manifests dir."""
    variables = {
        **settings.render_vars(),
        "ACME_CA_SERVER": STAGING_CA if settings.flag("ACME_STAGING") else PRODUCTION_CA,
    }
    rendered = mf.render(variables, targets=("k3s",))
    files: dict[str, list] = {}
    for manifest in rendered:
        files.setdefault("k3stack-" + Path(manifest.source).name, []).append(manifest)
    return {name: mf.to_yaml(group).encode() for name, group in files.items()}


# -- the run -----------------------------------------------------------------------------------------
def _parallel(hosts: Iterable[Host], work: Callable[[Host], object]) -> dict[str, object]:
    """work(host) for every host at once; exceptions are returned, not raised, so one failing
    host never hides the others' results."""
    hosts = list(hosts)
    if not hosts:
        return {}

    def guarded(host: Host):
        try:
            return work(host)
        except (RemoteError, KubeconfigError, OSError, EOFError, paramiko.SSHException) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return dict(zip([h.name for h in hosts], pool.map(guarded, hosts), strict=True))


def api_address(settings: Settings, first: Target) -> str:
    """The host clients use for the API: API_ENDPOINT's host, else the first server (127.0.0.1 for
    `local`). This is what goes into tls-san and what the certificate is checked for."""
    if settings["API_ENDPOINT"]:
        return split_endpoint(settings["API_ENDPOINT"])[0]
    return "127.0.0.1" if first.local else first.address


def api_port(settings: Settings) -> int:
    """The port clients dial: API_ENDPOINT's (a load balancer's), else K3s's own (6443)."""
    return (split_endpoint(settings["API_ENDPOINT"])[1] if settings["API_ENDPOINT"] else None) or k3s.API_PORT


def connect_and_check(
    settings: Settings, hosts: list[Host], options: Options, console: Console, report: Report, resolver
) -> dict[str, Facts]:
    """Connect to every host at once, read its facts and run preflight; print the preflight table.
    Returns facts by host name. Raises BootstrapError at the first failing finding (all are shown)."""
    console.step(f"checking {len(hosts)} host(s)")
    gathered = _parallel(hosts, lambda h: (h.connect(), gather(h))[1])
    facts: dict[str, Facts] = {}
    for host in hosts:
        got = gathered[host.name]
        if isinstance(got, Exception):
            report.findings.append(preflight.connect_failure(host.name, got))
            continue
        if host.trusted_key:
            console.warn(
                f"{host.name}: trusted new host key {host.trusted_key} (saved to {settings['SSH_KNOWN_HOSTS']})"
            )
        facts[host.name] = got
        report.findings += preflight.check_host(
            host.name, got, role=host.target.role, ours=bool(got.state), download=not settings["K3S_AIRGAP_BINARY"]
        )
    first = hosts[0].target
    names = [settings["CHAT_HOST"], settings["MONITOR_HOST"]]
    if first.local and not settings["API_ENDPOINT"]:
        console.warn(
            "DNS not checked: set API_ENDPOINT to this server's public address to check CHAT_HOST/MONITOR_HOST"
        )
    else:
        report.findings += preflight.check_dns(
            names, api_address(settings, first), strict=options.strict_dns, resolver=resolver
        )
    console.table(
        "preflight",
        ["host", "system", "arch", "init", "free disk", "memory", "clock", "result"],
        [_facts_row(host.name, facts.get(host.name), report.findings) for host in hosts],
    )
    problems = [f for f in report.findings if f.status != "ok"]
    if problems:
        console.table(
            "problems",
            ["host", "check", "result", "detail", "fix"],
            [[f.host, f.check, f.status, f.detail, f.fix] for f in problems],
        )
    failed = [f for f in report.findings if f.status == "fail"]
    if failed:
        f = failed[0]
        more = f" (and {len(failed) - 1} more problem(s) above)" if len(failed) > 1 else ""
        raise BootstrapError(f"preflight failed on {f.host}: {f.check}: {f.detail}{more}", f.fix)
    return facts


def _facts_row(name: str, facts: Facts | None, findings: list[preflight.Finding]) -> list[str]:
    bad = [f.check for f in findings if f.host == name and f.status == "fail"]
    result = "fail: " + ", ".join(bad) if bad else "ok"
    if facts is None:
        return [name, "-", "-", "-", "-", "-", "-", result]
    return [
        name,
        facts.os_name,
        facts.arch,
        facts.init,
        f"{facts.disk_free_gb:.0f} GB",
        f"{facts.memory_gb:.0f} GB",
        f"{round(facts.clock_skew):+d} s",
        result,
    ]


def join_token(settings: Settings, first: Host, facts: Facts) -> str:
    """K3S_TOKEN, else the first server's existing token, else a new one (kept by K3s from then on)."""
    configured = settings.secrets.get("K3S_TOKEN")
    existing = k3s.read_token(first) if facts.has_token else None
    if configured and existing and configured != existing:
        raise BootstrapError(
            f"K3S_TOKEN differs from the token {first.name} was initialised with ({k3s.TOKEN_FILE}); K3s cannot "
            f"change it in place: unset K3S_TOKEN to reuse the cluster's, or {command('reset --yes')} to start over"
        )
    return configured or existing or secrets.token_hex(32)


def specs(
    settings: Settings,
    servers: list[Host],
    agents: list[Host],
    token: str,
    installer: bytes,
    manifests: dict[str, bytes],
    airgap: Airgap | None = None,
) -> list[k3s.NodeSpec]:
    """The desired state of every host (NodeSpec, servers first): K3s config drop-in with token,
    tls-san (endpoint, first server, DOMAIN, K3S_TLS_SAN), node name/labels/taints; Traefik files on servers."""
    first = servers[0].target
    address = api_address(settings, first)
    tls_san = list(
        dict.fromkeys(
            [
                address,
                *([] if first.local else [first.address]),
                settings["DOMAIN"],
                *split_list(settings["K3S_TLS_SAN"]),
            ]
        )
    )
    result = []
    for index, host in enumerate(servers + agents):
        role = host.target.role
        config = k3s.node_config(
            role=role,
            token=token,
            first_server=None if index == 0 else (first.address if not first.local else "127.0.0.1"),
            cluster_init=index == 0 and len(servers) > 1,
            node_name=_node_name(host.target),
            tls_san=tls_san + ([host.target.address] if index and role == "server" else []),
            labels=split_list(settings["K3S_NODE_LABELS"]),
            taints=split_list(settings["K3S_NODE_TAINTS"]),
            disable=split_list(settings["K3S_DISABLE"]),
        )
        result.append(
            k3s.NodeSpec(
                host,
                role,
                settings["K3S_VERSION"],
                installer,
                config,
                manifests if role == "server" else {},
                airgap.binary if airgap else None,
                airgap.images if airgap else None,
            )
        )
    return result


@dataclass(frozen=True)
class Airgap:
    """K3s binary and images tarball (name, bytes) read before any host is touched (K3S_AIRGAP_*)."""

    binary: bytes | None = field(default=None, repr=False)
    images: tuple[str, bytes] | None = field(default=None, repr=False)


def load_airgap(settings: Settings) -> Airgap | None:
    """K3S_AIRGAP_BINARY / K3S_AIRGAP_IMAGES read here, before any host is touched."""

    def read(name: str) -> bytes | None:
        path = settings[name]
        if not path:
            return None
        try:
            return Path(path).expanduser().read_bytes()
        except OSError as exc:
            what = f"{name}={path}: cannot read it ({exc.strerror})"
            raise BootstrapError(what, "fix the path or unset it") from None

    binary, images = read("K3S_AIRGAP_BINARY"), read("K3S_AIRGAP_IMAGES")
    if images is not None and binary is None:
        raise BootstrapError(
            "K3S_AIRGAP_IMAGES is set without K3S_AIRGAP_BINARY: an airgap install needs both",
            "set K3S_AIRGAP_BINARY to the k3s binary of K3S_VERSION, or unset K3S_AIRGAP_IMAGES",
        )
    if binary is None:
        return None
    return Airgap(binary, (Path(settings["K3S_AIRGAP_IMAGES"]).name, images) if images is not None else None)


def _node_name(target: Target) -> str:
    """Hosts are named by address (cloud images often share a hostname); this machine by its name."""
    if target.local:
        return socket.gethostname().split(".")[0].lower()
    return target.address.replace(":", "-").replace(".", "-").lower()


def bootstrap(
    settings: Settings,
    options: Options,
    console: Console,
    *,
    resolver: Callable[[str], list[str]] = preflight.resolve,
) -> Report:
    """`inv bootstrap`: check here → facts + preflight on all hosts → plan each host → (dry run: print
    the plans and stop) → lock → first server, other servers one by one, agents in parallel → kubeconfig → wait.
    Returns the Report. Raises BootstrapError (settings, preflight, a failed host, cluster not ready),
    RemoteError or KubeconfigError; nothing is written to a host before its preflight passed."""
    started = time.monotonic()
    report = Report()
    # Everything that can be checked here is, cheapest first, before any host is touched.
    check_release(settings, ci=options.ci)
    servers, agents = _hosts(settings, options)
    check_kubeconfig_target(settings, options)  # the last step writes it: a bad target fails here, not after
    manifests = traefik_manifests(settings)
    airgap = load_airgap(settings)
    installer = fetch_installer(settings, trust=options.trust_installer, console=console)
    locked: list[Host] = []
    try:
        facts = connect_and_check(settings, servers + agents, options, console, report, resolver)
        token = join_token(settings, servers[0], facts[servers[0].name])
        console.add_secrets([token])
        plan = {
            s.host.name: k3s.plan(s, facts[s.host.name])
            for s in specs(settings, servers, agents, token, installer, manifests, airgap)
        }
        check_upgrades(plan)  # a skipped minor or a downgrade is refused before any host changes
        if options.dry_run:
            return _dry_run(plan, report, console, started)

        def run(host: Host) -> k3s.NodeResult:
            return k3s.act(plan[host.name], facts[host.name], timeout=options.timeout)

        # After preflight (a refused run leaves nothing behind), and only when some host changes: a
        # run that writes nothing needs no lock, and a no-op re-run saves a write and a delete per host.
        if any(node.changed for node in plan.values()):
            locked = _lock(servers + agents, console)

        waves = install_waves(servers, agents, plan)
        if rolling(plan):
            run = _upgrade_step(servers[0], servers + agents, plan, facts, options, console)
        else:
            console.step("installing K3s")
        errors: dict[str, Exception] = {}
        for wave in waves:
            if errors:
                report.nodes += [
                    k3s.NodeResult(h.name, h.target.role, "skipped", "an earlier host failed") for h in wave
                ]
                continue
            for name, outcome in _parallel(wave, run).items():
                if isinstance(outcome, Exception):
                    errors[name] = outcome
                    outcome = k3s.NodeResult(name, plan[name].spec.role, "failed", _reason(name, outcome))
                report.nodes.append(outcome)
        console.table(
            "hosts", ["host", "role", "result", "detail"], [[n.host, n.role, n.action, n.detail] for n in report.nodes]
        )
        if errors:
            name, exc = next(iter(errors.items()))
            raise _host_error(
                name, exc, f"fix that, then run {command('bootstrap')} again (hosts that are done are not redone)"
            )
        report.kubeconfig = fetch_kubeconfig(settings, servers[0], options, console)
    finally:
        # At once; a host that is gone keeps its lock until it goes stale (_parallel returns its error).
        _parallel(locked, k3s.unlock)
        _close(servers + agents)
    report.uncordoned = wait_for_cluster(
        report.kubeconfig.path, settings["KUBECONFIG_CONTEXT"], len(servers) + len(agents), options.timeout, console
    )
    report.seconds = time.monotonic() - started
    return report


def check_upgrades(plan: dict[str, k3s.NodePlan]) -> None:
    """Raise BootstrapError naming the first host whose upgrade K3s does not support (a skipped minor
    release or a downgrade; upgrade.skew_problem has the rules). Hosts are judged one by one: a cluster
    left half-upgraded by an earlier run is judged per host."""
    for name, node in plan.items():
        problem = node.upgrade_from and upgrade.skew_problem(node.upgrade_from, node.spec.version)
        if problem:
            raise BootstrapError(f"{name}: {problem[0]}; nothing was changed", problem[1])


def rolling(plan: dict[str, k3s.NodePlan]) -> bool:
    """Some host's installed release changes: the run is an upgrade (one host at a time)."""
    return any(node.upgrade_from for node in plan.values())


def install_waves(servers: list[Host], agents: list[Host], plan: dict[str, k3s.NodePlan]) -> list[list[Host]]:
    """Hosts in the order they are brought to their plan, each wave finished before the next starts.
    A fresh install or a configuration change: first server, other servers one by one (etcd members join
    one at a time), agents all at once. An upgrade (some host's release changes): every host alone,
    servers first in their order, then agents, so never two nodes are down at once."""
    if rolling(plan):
        return [[host] for host in servers + agents]
    return [[servers[0]], *[[s] for s in servers[1:]], agents]


def _upgrade_step(
    first: Host,
    hosts: list[Host],
    plan: dict[str, k3s.NodePlan],
    facts: dict[str, Facts],
    options: Options,
    console: Console,
) -> Callable[[Host], k3s.NodeResult]:
    """Take the datastore snapshot on the first server (a failure stops the run before any host is
    touched), then return the step that brings one host to its plan: cordon + drain its Node (not on a
    single-node cluster: there is nowhere for its pods to go), install and restart, wait until the Node
    is Ready at the new release, uncordon. Every request goes through the first server's `k3s kubectl`."""
    upgrading = [plan[h.name] for h in hosts if plan[h.name].upgrade_from]
    before, after = upgrading[0].upgrade_from or "", upgrading[0].spec.version
    console.step(f"upgrading K3s {before} → {after}: datastore snapshot first, then one host at a time")
    name = upgrade.snapshot_name(before, after)
    try:
        path = upgrade.snapshot(first, name, _node_name(first.target), timeout=options.timeout)
    except RemoteError as exc:
        raise _host_error(first.name, exc, f"fix that, then run {command('bootstrap')} again") from None
    console.result(f"datastore snapshot {first.name}:{path}", "saved")
    single = len(hosts) == 1
    if single:
        console.warn(f"{first.name}: a single-node cluster is not drained (no other node for its pods to go to)")

    def step(host: Host) -> k3s.NodeResult:
        node = plan[host.name]
        if not node.changed:
            return k3s.act(node, facts[host.name], timeout=options.timeout)
        started = time.monotonic()
        name = _node_name(host.target)
        drained = bool(node.upgrade_from) and not single
        evicted: list[str] = []
        ours = False  # cordoned by this run (a node someone cordoned on purpose stays so)
        if drained:
            ours = upgrade.cordon(first, name)
            evicted = upgrade.drain(first, name, timeout=options.timeout)
        result = k3s.act(node, facts[host.name], timeout=options.timeout)
        try:
            upgrade.wait_ready(first, name, node.spec.version, timeout=options.timeout)
        except RemoteError as exc:
            if not ours:
                raise
            # The host is at the release now: a re-run finds it `ok`; the cordon's label tells it to uncordon.
            raise RemoteError(
                exc.what, f"{exc.hint}; once it is Ready, a run of {command('bootstrap')} uncordons node {name}"
            ) from None
        if ours:
            upgrade.uncordon(first, name)
        after = "Ready, uncordoned" if ours else "Ready, left cordoned as it was before the upgrade"
        how = f"drained ({len(evicted)} pod(s) evicted), {after}" if drained else "Ready"
        detail = f"{result.detail} ({how}; {time.monotonic() - started:.0f}s)"
        console.result(host.name, result.action, detail)
        return dataclasses.replace(result, detail=detail)

    return step


def _lock(hosts: list[Host], console: Console) -> list[Host]:
    """One bootstrap at a time per host: take every host's lock, or release what was taken and
    stop naming the holder. Returns the hosts locked (all of them)."""
    holder = f"{os.environ.get('USER') or 'root'}@{socket.gethostname()} pid {os.getpid()}"
    taken = _parallel(hosts, lambda h: k3s.lock(h, holder))
    locked = [h for h in hosts if not isinstance(taken[h.name], Exception)]
    refused = [taken[h.name] for h in hosts if isinstance(taken[h.name], Exception)]
    if refused:
        for host in locked:
            with contextlib.suppress(Exception):
                k3s.unlock(host)
        name = next(h.name for h in hosts if isinstance(taken[h.name], Exception))
        raise _host_error(name, refused[0], "check that the host is reachable over SSH, then run again")
    for host in locked:
        if taken[host.name]:
            console.warn(f"{host.name}: took over a stale bootstrap lock held by {taken[host.name]}")
    return locked


def _dry_run(plan: dict[str, k3s.NodePlan], report: Report, console: Console, started: float) -> Report:
    """Every host's plan as the result table, `would change` or `ok`; nothing was written."""
    report.nodes = [
        k3s.NodeResult(name, node.spec.role, "would change" if node.changed else "ok", node.describe())
        for name, node in plan.items()
    ]
    console.table(
        "hosts (dry run: nothing changed)",
        ["host", "role", "result", "detail"],
        [[n.host, n.role, n.action, n.detail] for n in report.nodes],
    )
    report.seconds = time.monotonic() - started
    return report


def fetch_kubeconfig(settings: Settings, first: Host, options: Options, console: Console) -> kcfg.WriteResult:
    """K3s's admin kubeconfig from the first server, pointed at the public address, checked
    against the API certificate, merged into KUBECONFIG_PATH (new entries win, backup kept)."""
    raw = first.read(k3s.KUBECONFIG)
    source = f"{first.name}:{k3s.KUBECONFIG}"
    if raw is None:
        raise BootstrapError(f"{source} does not exist: K3s has not started on {first.name} (see its log)")
    address = api_address(settings, first.target)
    host_part = f"[{address}]" if ":" in address else address
    server = f"https://{host_part}:{api_port(settings)}"
    config = kcfg.rewrite(raw, server=server, name=settings["KUBECONFIG_CONTEXT"], source=source)
    # Dial the first server itself (the endpoint may be a name or balancer not yet in DNS) and
    # check that the certificate it serves is valid for the endpoint clients will use.
    dial = "127.0.0.1" if first.target.local else first.target.address
    dial_url = f"https://{f'[{dial}]' if ':' in dial else dial}:{k3s.API_PORT}"
    cert = kcfg.server_certificate(dial_url, kcfg.ca_pem(config, source=source), timeout=10, source=source)
    kcfg.check_sans(cert, address, source=source)
    written = kcfg.write(kubeconfig_path(settings, options), config, merge_into_existing=True)
    console.result(
        f"kubeconfig {written.path} (context {settings['KUBECONFIG_CONTEXT']})",
        "changed" if written.changed else "unchanged",
    )
    return written


def release_marked(kube, listed: list[dict], console: Console) -> list[str]:
    """Uncordon the Nodes in `listed` that an earlier upgrade run cordoned (labelled upgrade.MARK)
    and left, because it stopped before they were Ready at their new release, now that they are
    Ready: one merge PATCH each (unschedulable and the label dropped), as `kubectl uncordon` does.
    Warns about marked Nodes still not Ready. Returns the Nodes uncordoned; no request when none is marked."""
    released = []
    for node in listed:
        name = node["metadata"]["name"]
        if upgrade.MARK not in (node["metadata"].get("labels") or {}):
            continue
        if not upgrade.node_state(node)[0]:
            console.warn(
                f"node {name} stays cordoned: an earlier upgrade run cordoned it and it is not Ready yet; "
                f"see kubectl describe node {name}, then run {command('bootstrap')} again"
            )
            continue
        body = {"spec": {"unschedulable": None}, "metadata": {"labels": {upgrade.MARK: None}}}
        kube.request("PATCH", f"/api/v1/nodes/{name}", body=body, content_type="application/merge-patch+json")
        console.result(f"node {name}", "changed", "uncordoned: Ready now (an earlier upgrade run stopped before)")
        released.append(name)
    return released


def wait_for_cluster(kubeconfig: Path, context: str, nodes: int, timeout: float, console: Console) -> list[str]:
    """Every node Ready and Traefik's chart installed (its helm-install job done); Nodes a stopped
    upgrade left cordoned are given back once Ready (release_marked). Returns those Nodes."""
    from .kube import ApiError, Kube, KubeError
    from .rollout import RolloutError, Waiter
    from .rollout import Target as Workload

    kube = Kube(str(kubeconfig), context, retries=2)
    deadline = time.monotonic() + timeout
    console.step(f"waiting for {nodes} node(s) to be Ready")
    try:
        kube.list("v1", "Node")
    except KubeError as exc:
        if isinstance(exc, ApiError):
            raise
        # Installed and checked through the first server itself; the endpoint (a DNS name or a
        # balancer) may simply not be reachable from here yet.
        console.warn(f"K3s is installed, but not reachable through the kubeconfig yet: {exc}")
        return []
    ready: list[str] = []
    while True:
        listed = kube.list("v1", "Node")
        ready = [n["metadata"]["name"] for n in listed if upgrade.node_state(n)[0]]
        if len(ready) >= nodes:
            break
        if time.monotonic() > deadline:
            names = ", ".join(sorted(n["metadata"]["name"] for n in listed)) or "none"
            raise BootstrapError(
                f"only {len(ready)} of {nodes} node(s) Ready after {timeout:.0f}s (registered: {names})",
                f"see why with kubectl --context {context} describe nodes, and on a host that is missing or "
                "not Ready: journalctl -u k3s (servers) or -u k3s-agent (agents); then run "
                f"{command('bootstrap')} again (with a longer --timeout if it was only slow)",
            )
        time.sleep(1)
    console.result(f"{len(ready)} node(s)", "ready")
    released = release_marked(kube, listed, console)
    # K3s's own workloads (coredns, local-path-provisioner, metrics-server, traefik once its
    # chart is in) and the Traefik chart's install job.
    core = [
        Workload("apps/v1", "Deployment", "kube-system", d["metadata"]["name"])
        for d in kube.list("apps/v1", "Deployment", "kube-system")
    ]
    traefik = Workload("helm.cattle.io/v1", "HelmChart", "kube-system", "traefik")
    try:
        Waiter(kube).wait([traefik, *core], timeout=max(deadline - time.monotonic(), 1))
    except RolloutError as exc:
        raise BootstrapError(f"the cluster did not become ready: {exc}") from None
    for workload in [traefik, *core]:
        console.result(workload.describe(), "ready")
    return released


def _host_error(name: str, exc: Exception, otherwise: str) -> BootstrapError:
    """A host's failure as one line that keeps the error's own fix (K3stackError.hint), else
    `otherwise`: a failed command's stderr says what broke, not what to do about it."""
    what = getattr(exc, "what", None) or str(exc) or type(exc).__name__
    return BootstrapError(f"{name}: {what.removeprefix(f'{name}: ')}", getattr(exc, "hint", "") or otherwise)


def _reason(host: str, exc: Exception) -> str:
    """An error's message without the host name it starts with (the table's first column has it)."""
    return str(exc).removeprefix(f"{host}: ")


def _close(hosts: list[Host]) -> None:
    for host in hosts:
        # Closing a broken connection must not hide the error that broke it.
        with contextlib.suppress(Exception):
            host.close()


def _hosts(settings: Settings, options: Options) -> tuple[list[Host], list[Host]]:
    servers, agents = inventory(settings, options)
    ssh = ssh_options(settings, options)
    return [Host(t, ssh) for t in servers], [Host(t, ssh) for t in agents]


def kubeconfig_only(settings: Settings, options: Options, console: Console) -> kcfg.WriteResult:
    """Just the kubeconfig step of bootstrap (after a reinstall, or on a new laptop)."""
    servers, _ = _hosts(settings, options)
    check_kubeconfig_target(settings, options)
    try:
        servers[0].connect()
        return fetch_kubeconfig(settings, servers[0], options, console)
    finally:
        servers[0].close()


@dataclass(frozen=True)
class ClusterBackup:
    """`inv backup --cluster`: the snapshot's path here and on the first server, its size and sha256."""

    path: Path
    remote: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        """For `--json`: path, remote (host:path), size, sha256."""
        return {"path": str(self.path), "remote": self.remote, "size": self.size, "sha256": self.sha256}


def cluster_backup(settings: Settings, options: Options, console: Console, *, to: str | None = None) -> ClusterBackup:
    """The K3s datastore snapshot taken on the first server over SSH (as before an upgrade: K3s's
    etcd-snapshot, or SQLite's online backup) and brought here: `to` is a directory (the snapshot's own
    name) or a file; default the current directory. Written atomically, mode 0600. Raises BootstrapError."""
    servers, _ = _hosts(settings, options)
    first = servers[0]
    destination = Path(to).expanduser() if to else Path.cwd()
    if not destination.is_dir() and not destination.parent.is_dir():
        raise BootstrapError(f"--to {to}: {destination.parent} is not a directory", "create it, or name another place")
    try:
        first.connect()
        console.step(f"cluster datastore snapshot on {first.name}")
        try:
            remote = upgrade.snapshot(first, "on-demand", _node_name(first.target), timeout=options.timeout)
        except RemoteError as exc:
            raise _host_error(first.name, exc, "fix that, then run again") from None
        data = first.read(remote)
    finally:
        first.close()
    if data is None:
        raise BootstrapError(
            f"{first.name}:{remote} vanished before it could be copied",
            "run it again (something on the server removed the snapshot: K3s prunes old ones, see "
            "etcd-snapshot-retention)",
        )
    path = destination / Path(remote).name if destination.is_dir() else destination
    kcfg._atomic_write(path, data)  # kubeconfig's writer: mode 0600 from the start, never half-written
    result = ClusterBackup(path, f"{first.name}:{remote}", len(data), hashlib.sha256(data).hexdigest())
    console.result(f"cluster snapshot {path} ({len(data)} bytes, from {result.remote})", "saved")
    console.warn(
        f"restoring it needs the cluster's token too (K3S_TOKEN, else {k3s.TOKEN_FILE} on {first.name}): "
        "keep it with your secrets, apart from the snapshot"
    )
    return result


def reset(settings: Settings, options: Options, console: Console) -> list[k3s.NodeResult]:
    """Uninstall K3s everywhere (agents first, so none keeps knocking at a vanished server), then
    remove the cluster's context from KUBECONFIG_PATH (checked first: a file that step could not
    write stops the reset before any host is touched)."""
    servers, agents = _hosts(settings, options)
    check_kubeconfig_target(settings, options, create=False)
    results: list[k3s.NodeResult] = []
    errors: dict[str, Exception] = {}
    try:
        for wave in (agents, servers[1:], servers[:1]):
            for name, outcome in _parallel(wave, lambda h: (h.connect(), k3s.reset(h, h.target.role))[1]).items():
                if isinstance(outcome, Exception):
                    errors[name] = outcome
                    role = next(h.target.role for h in wave if h.name == name)
                    outcome = k3s.NodeResult(name, role, "failed", _reason(name, outcome))
                results.append(outcome)
                console.result(outcome.host, outcome.action, f"({outcome.role}) {outcome.detail}")
    finally:
        _close(servers + agents)
    path = kubeconfig_path(settings, options)
    forgotten = kcfg.forget(path, settings["KUBECONFIG_CONTEXT"])
    console.result(
        f"context {settings['KUBECONFIG_CONTEXT']} in {path}", "removed" if forgotten.changed else "unchanged"
    )
    if errors:
        name, exc = next(iter(errors.items()))
        raise _host_error(name, exc, f"fix that, then run {command('reset --yes')} again (a reset host stays reset)")
    return results
