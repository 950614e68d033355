"""Running commands as root on a host: over SSH with Fabric, or on this machine (`--host local`).

Host keys are checked strictly: a host must be in the known_hosts file or match a pinned
fingerprint; trusting a new key needs `trust_new_keys` and is reported. Nothing ever prompts:
commands get no stdin from us, and sudo's password (when a user needs one) is answered from
the settings by Fabric's responder, never put on a command line.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import shlex
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ..errors import RemoteError
from ..retry import retrying

ROOT_UNKNOWN, ROOT_DIRECT, ROOT_SUDO_NOPASS, ROOT_SUDO_PASSWORD = range(4)
LOGIN_FIX = "check SSH_USER/SSH_KEY (key file or ssh-agent) and that the key is in the user's authorized_keys"


@dataclass(frozen=True)
class Target:
    """Where to connect: `address` is what SSH dials; `name` is what people read."""

    address: str
    user: str
    port: int = 22
    role: str = "server"  # server | agent

    @property
    def local(self) -> bool:
        """True for `--host local`: commands run on this machine, without SSH."""
        return self.address == "local"

    @property
    def name(self) -> str:
        """How people read the host: `user@address[:port]`, or `local`."""
        return "local" if self.local else f"{self.user}@{self.address}" + (f":{self.port}" if self.port != 22 else "")


@dataclass(frozen=True)
class SshOptions:
    """How to reach hosts: key file (then only it and ssh-agent's keys are offered; without one,
    ssh-agent and the ~/.ssh defaults), known_hosts or pinned fingerprints, a jump host, timeouts in
    seconds, the sudo password (never printed), and whether unknown keys may be trusted. `key` is
    key_file already loaded by `load_key` (bootstrap loads it once, before any connection)."""

    key_file: str = ""
    key: paramiko.PKey | None = field(default=None, repr=False, compare=False)
    known_hosts: str = "~/.ssh/known_hosts"
    pinned: dict[str, str] = field(default_factory=dict)  # address → "SHA256:..."
    jump: Target | None = None
    timeout: float = 10  # seconds to connect (TCP + SSH handshake)
    sudo_password: str = field(default="", repr=False)
    key_passphrase: str = field(default="", repr=False)  # for an encrypted key_file (ssh-agent preferred)
    trust_new_keys: bool = False
    attempts: int = 3
    keepalive: float = 15  # seconds between SSH keepalives: a dead peer cannot hold a session open
    command_timeout: float = 900  # seconds one command (or SFTP copy) may take before the host counts as stalled


@dataclass(frozen=True)
class CommandResult:
    """A finished command: its stdout, stderr and exit status."""

    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.exited == 0


def https_url(address: str, port: int) -> str:
    """https://address:port, with an IPv6 address in brackets."""
    return f"https://[{address}]:{port}" if ":" in address else f"https://{address}:{port}"


# Key types paramiko can load, the usual one first: each class is tried in turn, as paramiko's own
# SSHClient does (a file's type is only known once one of them parses it).
KEY_TYPES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
# Modules whose code loads and decrypts key files: an SSHException raised in them is about a key.
_KEY_MODULES = frozenset(kind.__module__ for kind in (paramiko.PKey, *KEY_TYPES))


def load_key(path: str, passphrase: str = "", *, agent: bool | None = None) -> paramiko.PKey | None:
    """The private key at `path` (SSH_KEY), decrypted with `passphrase` (SSH_KEY_PASSPHRASE) when it
    is encrypted. None for an encrypted key without a passphrase while an ssh-agent runs (`agent`;
    None: SSH_AUTH_SOCK is set): the agent is asked for it instead. Raises RemoteError, final
    (another try reads the same file), for a file that cannot be read or is not a private key,
    and for an encrypted key that no passphrase here opens."""
    file = str(Path(path).expanduser())
    encrypted = False
    for kind in KEY_TYPES:
        try:
            return kind.from_private_key_file(file)
        except paramiko.PasswordRequiredException:
            encrypted = True
            break
        except OSError as exc:
            raise RemoteError(
                f"SSH_KEY={path}: cannot read it ({exc.strerror or exc})",
                "make it readable to this user, or point SSH_KEY at your private key",
            ) from None
        except (paramiko.SSHException, ValueError):
            continue  # another type's file (or not a key at all): the next class may read it
    if not encrypted:
        raise RemoteError(
            f"SSH_KEY={path}: not a private key k3stack can use (Ed25519, ECDSA or RSA)",
            "point SSH_KEY at the private key file (not the .pub), in OpenSSH or PEM format",
        )
    if not passphrase:
        if agent if agent is not None else bool(os.environ.get("SSH_AUTH_SOCK")):
            return None
        raise RemoteError(
            f"SSH_KEY={path}: the key is encrypted and no passphrase is available here (k3stack never prompts)",
            f"load it into ssh-agent (ssh-add {path}), or set SSH_KEY_PASSPHRASE in the environment",
        )
    for kind in KEY_TYPES:
        try:
            return kind.from_private_key_file(file, password=passphrase)
        except (paramiko.SSHException, ValueError):
            continue  # a wrong passphrase decrypts to garbage, which no class parses
    raise RemoteError(
        f"SSH_KEY={path}: SSH_KEY_PASSPHRASE does not open this key (it is encrypted with another passphrase)",
        f"set SSH_KEY_PASSPHRASE to this key's passphrase (check it with ssh-keygen -y -f {path}), "
        f"or unset it and load the key into ssh-agent (ssh-add {path})",
    )


def connect_kwargs(options: SshOptions) -> dict:
    """paramiko's connect arguments for `options`: the loaded SSH_KEY as `pkey` (paramiko then
    loads no key file itself, so a key it cannot open never passes for a network fault); only
    ssh-agent when that key is encrypted and the agent is to unlock it; without SSH_KEY, the
    agent and ~/.ssh's default keys (opened with SSH_KEY_PASSPHRASE when set). Raises RemoteError
    as `load_key` does."""
    kwargs: dict = {}
    if options.key_file:
        key = options.key or load_key(options.key_file, options.key_passphrase)
        kwargs["look_for_keys"] = False  # SSH_KEY names the key: no ~/.ssh default stands in for it
        if key is not None:
            kwargs["pkey"] = key
    elif options.key_passphrase:
        kwargs["passphrase"] = options.key_passphrase
    return kwargs


def _key_file_failing(exc: BaseException) -> str | None:
    """The key file paramiko failed to load or decrypt when it raised `exc`, else None. Such an
    error's traceback passes through paramiko's key code reading that file (SSHClient keeps it and
    raises it when no other key got in); a network or protocol error's never does."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in _KEY_MODULES:
            name = tb.tb_frame.f_locals.get("filename")
            found = name if isinstance(name, str) else found
        tb = tb.tb_next
    return found


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's spelling: SHA256:<base64 without padding>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """For keys not in known_hosts: accept a pinned fingerprint, or (opted in) trust and record."""

    def __init__(self, target: Target, options: SshOptions):
        self.target, self.options = target, options
        self.trusted: str | None = None

    def missing_host_key(self, client, hostname, key):
        seen = fingerprint(key)
        pinned = self.options.pinned.get(self.target.address)
        if pinned is not None:
            if pinned != seen:
                raise RemoteError(
                    f"{self.target.name}: host key {seen} does not match the pinned {pinned} (SSH_HOST_KEYS); "
                    "if the host was reinstalled, verify the new key out of band and update SSH_HOST_KEYS"
                )
            return
        if self.options.trust_new_keys:
            self.trusted = seen
            known = Path(self.options.known_hosts).expanduser()
            known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            entry = hostname if self.target.port == 22 else f"[{self.target.address}]:{self.target.port}"
            with known.open("a") as out:
                out.write(f"{entry} {key.get_name()} {key.get_base64()}\n")
            return
        raise RemoteError(
            f"{self.target.name}: unknown host key {seen} ({key.get_name()}); verify it on the host "
            f"(ssh-keygen -lf /etc/ssh/ssh_host_{key.get_name().removeprefix('ssh-')}_key.pub), then add it to "
            f"{self.options.known_hosts} or SSH_HOST_KEYS, or re-run with --trust-new-host-keys"
        )


class Host:
    """One host: `run()` as root, `upload()` files with an exact mode, `read()` root-only files."""

    def __init__(self, target: Target, options: SshOptions):
        self.target = target
        self.options = options
        self._conn = None
        self._root = ROOT_UNKNOWN
        self._staging_dir: str | None = None
        self._jump: Host | None = None
        self._staged: list[str] = []
        self.trusted_key: str | None = None

    @property
    def name(self) -> str:
        """The target's name (`user@address[:port]` or `local`)."""
        return self.target.name

    # -- connecting --------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the SSH connection once (no-op for `local` or when open). Raises RemoteError: unknown,
        changed or mismatching host key, login refused, encrypted key without agent, unreachable after retries."""
        if self.target.local or self._conn is not None:
            return
        from fabric import Config, Connection

        config = Config(overrides={"run": {"in_stream": False, "hide": True, "warn": True}, "sudo": {"password": ""}})
        if self.options.sudo_password:
            config.sudo.password = self.options.sudo_password
        kwargs = connect_kwargs(self.options)  # the key is loaded (or refused) before any connection
        gateway = None
        if self.options.jump is not None:
            # Same host-key rules for the bastion; a key trusted there is reported like any other.
            self._jump = Host(self.options.jump, dataclasses.replace(self.options, jump=None))
            gateway = self._jump._connection()
        conn = Connection(
            self.target.address,
            user=self.target.user,
            port=self.target.port,
            config=config,
            connect_timeout=self.options.timeout,
            connect_kwargs=kwargs,
            gateway=gateway,
        )
        known = Path(self.options.known_hosts).expanduser()
        if known.exists():
            conn.client.load_host_keys(str(known))
        policy = _HostKeyPolicy(self.target, self.options)
        conn.client.set_missing_host_key_policy(policy)
        self._open(conn, agent_only=bool(self.options.key_file) and "pkey" not in kwargs)
        self.trusted_key = policy.trusted
        if self._jump is not None and self._jump.trusted_key:
            self.trusted_key = f"{self.trusted_key or 'known'}; jump host {self._jump.name}: {self._jump.trusted_key}"
        self._conn = conn

    def _connection(self):
        self.connect()
        return self._conn

    def _open(self, conn, *, agent_only: bool = False) -> None:
        """Open the SSH connection: up to `options.attempts` tries for what another try can fix
        (refused, reset, timed out: the host may be booting), with backoff; a changed host key, a
        key file that cannot be loaded or decrypted and a refused login are final (RemoteError at
        once). `agent_only`: SSH_KEY is encrypted and left to ssh-agent (a refusal says so)."""

        def once():
            try:
                conn.open()
            except paramiko.BadHostKeyException as exc:
                raise RemoteError(
                    f"{self.name}: host key CHANGED — got {fingerprint(exc.key)}, {self.options.known_hosts} has "
                    f"{fingerprint(exc.expected_key)}; if the host was reinstalled, verify the new key and remove "
                    f"the old line (ssh-keygen -R {self.target.address}); otherwise someone may be intercepting"
                ) from None
            except paramiko.SSHException as exc:
                # PasswordRequiredException is an AuthenticationException: the key comes first.
                file = _key_file_failing(exc)
                if file is not None:
                    raise self._key_error(file, exc) from None
                if not isinstance(exc, paramiko.AuthenticationException):
                    raise  # the network or sshd: another try may do
                hint = LOGIN_FIX
                if agent_only:  # the key file was encrypted and no passphrase set: the agent had to hold it
                    hint = f"ssh-add {self.options.key_file} (it is encrypted), or set SSH_KEY_PASSPHRASE; {hint}"
                raise RemoteError(f"{self.name}: SSH login refused for user {self.target.user}", hint) from None
            # A host that vanishes mid-run (power, network black hole) is noticed, not waited on forever.
            conn.transport.set_keepalive(max(1, int(self.options.keepalive)))

        policy = retrying(
            lambda exc: (
                isinstance(exc, (OSError, paramiko.SSHException, EOFError)) and not isinstance(exc, RemoteError)
            ),
            attempts=self.options.attempts,
            first=1.0,
            cap=5.0,
        )
        try:
            policy(once)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise RemoteError(
                f"{self.name}: cannot connect on port {self.target.port} ({str(exc) or type(exc).__name__}) "
                f"after {self.options.attempts} attempts",
                "check the address, SSH_PORT and that sshd runs and the firewall lets you in",
            ) from None

    def _key_error(self, file: str, exc: paramiko.SSHException) -> RemoteError:
        """A key file paramiko itself could not open (without SSH_KEY: ~/.ssh's defaults, or one
        from ~/.ssh/config) as a final error naming it: the same file fails the same way next time."""
        if isinstance(exc, paramiko.PasswordRequiredException):
            return RemoteError(
                f"{self.name}: the SSH key {file} is encrypted and no passphrase is available here "
                "(k3stack never prompts)",
                f"load it into ssh-agent (ssh-add {file}), or set SSH_KEY_PASSPHRASE in the environment",
            )
        if self.options.key_passphrase:
            return RemoteError(
                f"{self.name}: SSH_KEY_PASSPHRASE does not open the SSH key {file} ({exc})",
                f"set SSH_KEY_PASSPHRASE to that key's passphrase (check it with ssh-keygen -y -f {file}), "
                "or set SSH_KEY to the key you mean",
            )
        return RemoteError(
            f"{self.name}: cannot load the SSH key {file} ({exc})",
            "point SSH_KEY at your private key (Ed25519, ECDSA or RSA, in OpenSSH or PEM format)",
        )

    def _abandon(self) -> None:
        """Drop a connection whose peer stopped answering: close the socket under it (which
        unblocks any call waiting on it) and forget it; nothing more is sent there."""
        if self._conn is not None:
            transport = self._conn.client.get_transport()
            if transport is not None:
                transport.close()
            self._conn = None
            self._staging_dir = None

    def close(self) -> None:
        """Remove the private staging directory and close the connection (and the jump host's)."""
        if self._staging_dir is not None:
            self._raw(f"rm -rf {shlex.quote(self._staging_dir)}")
            self._staging_dir = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._jump is not None:  # Fabric does not close a gateway with the connection
            self._jump.close()
            self._jump = None

    # -- commands ----------------------------------------------------------------------------
    def _stalled(self, what: str, seconds: float) -> RemoteError:
        return RemoteError(
            f"{self.name}: {what} got no answer for {seconds:.0f}s: the host or the network stalled",
            "check that the host is up and reachable over SSH, then run again (finished steps are not redone)",
        )

    def _raw(self, command: str, *, sudo_password: bool = False, timeout: float | None = None) -> CommandResult:
        """Run `command` as the login user (or through sudo's prompt); at most `timeout` seconds
        (default: options.command_timeout), else RemoteError naming the host as stalled."""
        timeout = timeout or self.options.command_timeout
        if self.target.local:
            try:
                done = subprocess.run(
                    ["/bin/sh", "-c", command],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise self._stalled(f"`{command.split()[0]}`", timeout) from None
            return CommandResult(done.stdout, done.stderr, done.returncode)
        conn = self._connection()
        outcome: dict[str, object] = {}

        def call() -> None:
            try:
                if sudo_password:
                    outcome["result"] = conn.sudo(command, hide=True, warn=True, in_stream=False, timeout=timeout)
                else:
                    outcome["result"] = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                outcome["error"] = exc

        # invoke's timeout covers a command that runs too long on a live connection; a peer that
        # stopped answering blocks paramiko before that timer starts (opening the channel), so a
        # watchdog here gives up on the whole connection: closing the transport unblocks the call.
        worker = threading.Thread(target=call, name=f"ssh {self.name}", daemon=True)
        worker.start()
        worker.join(timeout + 5)
        if worker.is_alive():
            self._abandon()
            worker.join(5)
            raise self._stalled("a command", timeout)
        exc = outcome.get("error")
        if exc is not None:
            if type(exc).__name__ == "CommandTimedOut":
                raise self._stalled("a command", timeout) from None
            if type(exc).__name__ == "AuthFailure":  # invoke's: sudo refused the password
                raise RemoteError(
                    f"{self.name}: sudo refused the password for {self.target.user}",
                    "correct SUDO_PASSWORD, or allow passwordless sudo, or connect as root",
                ) from None
            if isinstance(exc, (OSError, paramiko.SSHException, EOFError, socket.timeout)):
                raise RemoteError(
                    f"{self.name}: connection lost ({exc})", "check the host and the network, then run again"
                ) from None
            raise exc
        result = outcome["result"]
        return CommandResult(result.stdout, result.stderr, result.exited)

    def _probe_root(self) -> int:
        if self._root != ROOT_UNKNOWN:
            return self._root
        if self.target.local:
            self._root = ROOT_DIRECT if os.geteuid() == 0 else ROOT_SUDO_NOPASS
        elif self._raw("id -u").stdout.strip() == "0":
            self._root = ROOT_DIRECT
        elif self._raw("sudo -n true").ok:
            self._root = ROOT_SUDO_NOPASS
        elif self.options.sudo_password:
            self._root = ROOT_SUDO_PASSWORD
        else:
            raise RemoteError(
                f"{self.name}: {self.target.user} is not root and `sudo -n true` fails (no passwordless sudo)",
                "connect as root (SSH_USER=root), allow passwordless sudo for the user, or set SUDO_PASSWORD "
                "(environment or env file) if the user may sudo with a password",
            )
        return self._root

    def run(self, command: str, *, check: bool = True, what: str = "", timeout: float | None = None) -> CommandResult:
        """Run a shell command as root; with `check`, a non-zero exit raises naming `what`.
        At most `timeout` seconds (default: SshOptions.command_timeout), else RemoteError (stalled)."""
        wrapped = f"sh -c {shlex.quote(command)}"
        mode = self._probe_root()
        if mode == ROOT_DIRECT:
            result = self._raw(wrapped, timeout=timeout)
        elif mode == ROOT_SUDO_NOPASS:
            result = self._raw(f"sudo -n {wrapped}", timeout=timeout)
        else:
            result = self._raw(wrapped, sudo_password=True, timeout=timeout)
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            raise RemoteError(
                f"{self.name}: {what or command.split()[0]} failed (exit {result.exited}): {' | '.join(detail)}"
            )
        return result

    def read(self, path: str) -> bytes | None:
        """A file's bytes (read as root), or None when it does not exist."""
        result = self.run(f"if [ -f {shlex.quote(path)} ]; then base64 < {shlex.quote(path)}; else echo ABSENT; fi")
        if result.stdout.strip() == "ABSENT":
            return None
        return base64.b64decode(result.stdout)

    def upload(self, data: bytes, path: str, mode: int = 0o600) -> None:
        """Place `data` at `path`, owned by root with `mode`. The bytes travel by SFTP (or a local
        file) into a private 0700 directory, never through a command line, then `install` puts
        them in place with the final mode before the rename makes them visible."""
        staging = self._staging()
        name = f"{staging}/{len(self._staged)}"
        self._staged.append(name)
        if self.target.local:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        else:
            try:
                conn = self._connection()
                conn.sftp().get_channel().settimeout(self.options.command_timeout)  # a stalled copy fails too
                conn.put(io.BytesIO(data), remote=name)
            except TimeoutError:
                raise self._stalled(f"copying {path}", self.options.command_timeout) from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise RemoteError(
                    f"{self.name}: cannot copy {path} over SFTP ({exc or type(exc).__name__}); "
                    "sshd there must offer the sftp subsystem (Subsystem sftp in sshd_config)"
                ) from None
        quoted = shlex.quote(path)
        self.run(
            f'set -e; d=$(dirname {quoted}); mkdir -p "$d"; t="$d/.k3stack.$$"; '
            f'install -m {mode:o} -o root -g root {shlex.quote(name)} "$t"; mv -f "$t" {quoted}; '
            f"rm -f {shlex.quote(name)}",
            what=f"writing {path}",
        )

    def _staging(self) -> str:
        if self._staging_dir is None:
            if self.target.local:
                self._staging_dir = tempfile.mkdtemp(prefix="k3stack-")
            else:
                made = self._raw("umask 077 && mktemp -d /tmp/k3stack.XXXXXXXX")
                if not made.ok:
                    raise RemoteError(
                        f"{self.name}: cannot create a private temp directory: {made.stderr.strip()}",
                        "check that /tmp on the host exists, is writable and has space (df -h /tmp), then run again",
                    )
                self._staging_dir = made.stdout.strip()
        return self._staging_dir
