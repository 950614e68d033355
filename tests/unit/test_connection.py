"""SSH keys and connection errors without a host: a key file is loaded (or refused) before any
connection, and what paramiko cannot open is never retried as if the network had failed."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from k3stack import bootstrap as boot
from k3stack import settings
from k3stack.errors import RemoteError
from k3stack.remote.connection import CommandResult, Host, SshOptions, Target, connect_kwargs, load_key

PASSPHRASE = "correct horse battery"


def ed25519_file(path: Path, passphrase: str = "") -> Path:
    """A new Ed25519 key in OpenSSH format (what ssh-keygen writes), encrypted when `passphrase`."""
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
        )
    )
    return path


@pytest.fixture(scope="module")
def rsa_key() -> paramiko.RSAKey:
    return paramiko.RSAKey.generate(2048)


@pytest.fixture
def keys(tmp_path, rsa_key) -> dict[str, Path]:
    """Key files of each kind: Ed25519 (OpenSSH format) and RSA (PEM, as paramiko writes it)."""
    rsa_encrypted = tmp_path / "id_rsa_encrypted"
    rsa_key.write_private_key_file(str(rsa_encrypted), password=PASSPHRASE)
    rsa_plain = tmp_path / "id_rsa"
    rsa_key.write_private_key_file(str(rsa_plain))
    not_a_key = tmp_path / "id_ed25519.pub"
    not_a_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0 me@laptop\n")
    return {
        "ed25519 encrypted": ed25519_file(tmp_path / "id_ed25519_encrypted", PASSPHRASE),
        "ed25519": ed25519_file(tmp_path / "id_ed25519"),
        "rsa encrypted": rsa_encrypted,
        "rsa": rsa_plain,
        "public key": not_a_key,
    }


@pytest.mark.parametrize("kind", ["ed25519 encrypted", "rsa encrypted"])
def test_a_wrong_passphrase_is_named_as_such_not_as_a_network_fault(keys, kind):
    path = str(keys[kind])
    with pytest.raises(RemoteError) as caught:
        load_key(path, "not the passphrase", agent=True)  # an agent does not excuse a wrong passphrase
    assert caught.value.what == (
        f"SSH_KEY={path}: SSH_KEY_PASSPHRASE does not open this key (it is encrypted with another passphrase)"
    )
    assert caught.value.hint.startswith("set SSH_KEY_PASSPHRASE to this key's passphrase (check it with ssh-keygen -y")
    assert f"ssh-add {path}" in caught.value.hint


@pytest.mark.parametrize("kind", ["ed25519 encrypted", "rsa encrypted"])
def test_an_encrypted_key_without_passphrase_or_agent_names_both_ways_to_open_it(keys, kind):
    path = str(keys[kind])
    with pytest.raises(RemoteError) as caught:
        load_key(path, "", agent=False)
    assert caught.value.what == (
        f"SSH_KEY={path}: the key is encrypted and no passphrase is available here (k3stack never prompts)"
    )
    assert caught.value.hint == f"load it into ssh-agent (ssh-add {path}), or set SSH_KEY_PASSPHRASE in the environment"


def test_an_encrypted_key_is_left_to_a_running_agent(keys, monkeypatch):
    path = str(keys["ed25519 encrypted"])
    assert load_key(path, "", agent=True) is None
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/user/1000/ssh-agent.sock")
    assert connect_kwargs(SshOptions(key_file=path)) == {"look_for_keys": False}  # the agent, and only it
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(RemoteError, match="is encrypted and no passphrase is available"):
        connect_kwargs(SshOptions(key_file=path))


@pytest.mark.parametrize(("kind", "passphrase"), [("ed25519 encrypted", PASSPHRASE), ("rsa encrypted", PASSPHRASE)])
def test_the_right_passphrase_opens_the_key_and_paramiko_gets_the_key_itself(keys, kind, passphrase):
    kwargs = connect_kwargs(SshOptions(key_file=str(keys[kind]), key_passphrase=passphrase))
    assert set(kwargs) == {"pkey", "look_for_keys"}  # no key_filename: paramiko opens no key file itself
    assert kwargs["look_for_keys"] is False
    assert isinstance(kwargs["pkey"], paramiko.PKey)


def test_plain_keys_load_and_a_passphrase_set_for_nothing_does_no_harm(keys, rsa_key):
    assert load_key(str(keys["rsa"]), "") == rsa_key
    assert load_key(str(keys["ed25519"]), "some passphrase").get_name() == "ssh-ed25519"


def test_a_file_that_is_no_private_key_is_named(keys, tmp_path):
    path = str(keys["public key"])
    with pytest.raises(RemoteError) as caught:
        load_key(path, PASSPHRASE)
    assert caught.value.what == f"SSH_KEY={path}: not a private key k3stack can use (Ed25519, ECDSA or RSA)"
    assert "not the .pub" in caught.value.hint
    with pytest.raises(RemoteError, match=rf"SSH_KEY={tmp_path}: cannot read it \(Is a directory\) — fix: "):
        load_key(str(tmp_path))


def test_without_ssh_key_paramiko_looks_for_the_default_keys_with_the_passphrase():
    assert connect_kwargs(SshOptions()) == {}
    assert connect_kwargs(SshOptions(key_passphrase="p")) == {"passphrase": "p"}


def test_bootstrap_loads_the_key_before_anything_else(keys, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    base = {"DOMAIN": "203.0.113.10.sslip.io", "ACME_EMAIL": "ops@example.com"}

    def options(**environ):
        loaded = settings.load(env_dir=Path("/nonexistent"), environ={**base, **environ})
        return boot.ssh_options(loaded, boot.Options())

    path = str(keys["ed25519 encrypted"])
    with pytest.raises(boot.BootstrapError, match=rf"^SSH_KEY={path}: SSH_KEY_PASSPHRASE does not open this key"):
        options(SSH_KEY=path, SSH_KEY_PASSPHRASE="wrong passphrase")
    with pytest.raises(boot.BootstrapError, match=rf"^SSH_KEY={path}: the key is encrypted .* — fix: load it into"):
        options(SSH_KEY=path)
    opened = options(SSH_KEY=path, SSH_KEY_PASSPHRASE=PASSPHRASE)
    assert opened.key is not None
    assert PASSPHRASE not in repr(opened)
    assert connect_kwargs(opened)["pkey"] is opened.key  # loaded once, not again per host


# -- what paramiko raises while connecting ---------------------------------------------------------
class FakeConnection:
    """Stands in for fabric's Connection in Host._open: open() runs `fail` each time."""

    def __init__(self, fail):
        self.fail, self.opened = fail, 0

    def open(self):
        self.opened += 1
        self.fail()


def saved_and_reraised(load):
    """What SSHClient._auth does with a key it cannot open: keep the error, try the other ways
    in, and raise the kept error when none got in."""

    def fail():
        try:
            load()
        except paramiko.SSHException as exc:
            saved = exc
        raise saved

    return fail


def host(**options) -> Host:
    return Host(Target("203.0.113.9", "root"), SshOptions(attempts=3, **options))


def test_a_default_key_paramiko_cannot_decrypt_is_final_and_named(keys):
    """Without SSH_KEY, paramiko opens ~/.ssh/id_* itself with SSH_KEY_PASSPHRASE: a wrong one
    used to come out as `cannot connect on port 22 (Invalid key) after 3 attempts`."""
    path = str(keys["ed25519 encrypted"])
    remote = host(key_passphrase="not the passphrase")
    conn = FakeConnection(saved_and_reraised(lambda: paramiko.Ed25519Key.from_private_key_file(path, "wrong")))
    with pytest.raises(RemoteError) as caught:
        remote._open(conn)
    assert conn.opened == 1  # final: the same file fails the same way on every try
    assert caught.value.what == f"root@203.0.113.9: SSH_KEY_PASSPHRASE does not open the SSH key {path} (Invalid key)"
    assert caught.value.hint.startswith("set SSH_KEY_PASSPHRASE to that key's passphrase (check it with ssh-keygen")


def test_a_default_key_that_is_encrypted_without_passphrase_is_final_and_named(keys):
    path = str(keys["rsa encrypted"])
    remote = host()
    conn = FakeConnection(saved_and_reraised(lambda: paramiko.RSAKey.from_private_key_file(path)))
    with pytest.raises(RemoteError) as caught:
        remote._open(conn)
    assert conn.opened == 1
    assert caught.value.what == (
        f"root@203.0.113.9: the SSH key {path} is encrypted and no passphrase is available here (k3stack never prompts)"
    )
    assert caught.value.hint == f"load it into ssh-agent (ssh-add {path}), or set SSH_KEY_PASSPHRASE in the environment"


def test_a_default_file_that_is_no_key_is_final_and_named(keys):
    path = str(keys["public key"])
    conn = FakeConnection(saved_and_reraised(lambda: paramiko.Ed25519Key.from_private_key_file(path)))
    with pytest.raises(RemoteError, match=rf"cannot load the SSH key {path} \(.*\) — fix: point SSH_KEY at"):
        host()._open(conn)
    assert conn.opened == 1


def test_a_network_fault_is_still_retried():
    def banner():
        raise paramiko.SSHException("Error reading SSH protocol banner")

    conn = FakeConnection(banner)
    remote = Host(Target("203.0.113.9", "root"), SshOptions(attempts=2))
    with pytest.raises(RemoteError) as caught:
        remote._open(conn)
    assert conn.opened == 2
    assert caught.value.what == (
        "root@203.0.113.9: cannot connect on port 22 (Error reading SSH protocol banner) after 2 attempts"
    )


def test_a_refused_login_with_an_encrypted_key_left_to_the_agent_says_so():
    def refused():
        raise paramiko.AuthenticationException("Authentication failed.")

    with pytest.raises(RemoteError) as caught:
        host(key_file="~/.ssh/id_ed25519")._open(FakeConnection(refused), agent_only=True)
    assert caught.value.hint.startswith("ssh-add ~/.ssh/id_ed25519 (it is encrypted), or set SSH_KEY_PASSPHRASE; ")
    with pytest.raises(RemoteError) as caught:
        host()._open(FakeConnection(refused))
    assert caught.value.hint.startswith("check SSH_USER/SSH_KEY")


def test_a_host_without_a_usable_tmp_says_what_to_check():
    remote = host()
    remote._raw = lambda command, **kwargs: CommandResult("", "mktemp: No space left on device", 1)
    with pytest.raises(RemoteError) as caught:
        remote._staging()
    assert (
        caught.value.what == "root@203.0.113.9: cannot create a private temp directory: mktemp: No space left on device"
    )
    assert "df -h /tmp" in caught.value.hint
