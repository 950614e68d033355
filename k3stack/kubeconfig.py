"""Kubeconfig: turn K3s's k3s.yaml into one that works from the user's machine, and save it safely.

K3s writes /etc/rancher/k3s/k3s.yaml for use on the server itself: server https://127.0.0.1:6443,
cluster, user and context all named "default". `rewrite` points it at the public address and
gives every piece the cluster's own name; `check_sans` proves, before anything is written, that
the API server's certificate is valid for that address (no peer checks this: users find out from
kubectl's x509 error); `merge` puts it into ~/.kube/config with the new entries winning (k3sup's
--merge keeps the old ones, so a reinstalled cluster gets stale certificates); `write` saves it
atomically, 0600 from the first byte, with a backup, and not at all when nothing changed.

Everything works on the parsed YAML, never on the text.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import os
import secrets
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509

from . import reader
from .errors import KubeconfigError, command
from .retry import retrying

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))
# What to do when the serving certificate lacks the address. K3s keeps its serving certificate
# (server/tls/dynamic-cert.json, mirrored in the kube-system/k3s-serving secret) across restarts,
# and users report a new tls-san not showing up after one (k3s-io/k3s#3369, #4149).
# `k3s certificate rotate` is the supported way: it leaves a dynamic-cert-regenerate marker
# because, as its source says, the dynamic listener's cache file cannot simply be deleted.
SAN_FIX = (
    "add it to K3S_TLS_SAN (or set the API endpoint to a name the certificate carries) and re-run"
    f" {command('bootstrap')}; if the certificate still lacks it, K3s kept its old one: run"
    " `systemctl stop k3s && k3s certificate rotate && systemctl start k3s` on each server"
)


@dataclass(frozen=True)
class WriteResult:
    """What `write` did: `changed` False means the file already said exactly this."""

    path: Path
    changed: bool
    backup: Path | None  # the previous content, when there was one and it changed


def rewrite(text: str | bytes, *, server: str, name: str, source: str) -> dict:
    """K3s's kubeconfig pointed at `server`, with cluster, user and context renamed to `name`.

    `text` may be the file's bytes as read from the host (UTF-8). Credentials
    (certificate-authority-data, client certificate/key, token) are kept as they are. Raises
    KubeconfigError (naming `source`, and the line for YAML errors) unless `text` is a kubeconfig
    with exactly one cluster, user and context that refer to each other, as K3s writes it.
    """
    _check_server(server, source="the API endpoint")
    if isinstance(text, bytes):
        text = _decode(text, source)
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise KubeconfigError(f"{source}: context name {name!r} is empty or has spaces", "set a name like my-cluster")
    config = _parse(text, source, fix=f"fetch {K3S_KUBECONFIG} again (the file is damaged)")
    if config is None:
        raise KubeconfigError(f"{source}: file is empty", f"check that K3s is running and wrote {K3S_KUBECONFIG}")
    entries = {}
    for section, key in SECTIONS:
        items = config.get(section)
        if not isinstance(items, list) or len(items) != 1:
            count = len(items) if isinstance(items, list) else 0
            raise KubeconfigError(
                f"{source}: expected exactly one entry in {section}, found {count}",
                f"fetch the kubeconfig K3s writes ({K3S_KUBECONFIG}), not a merged one",
            )
        item = items[0]
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get(key), dict):
            raise KubeconfigError(
                f"{source}: the entry in {section} needs a name and a {key} mapping",
                f"fetch {K3S_KUBECONFIG} again (the file is damaged)",
            )
        entries[key] = item
    context = entries["context"]["context"]
    for ref in ("cluster", "user"):
        if context.get(ref) != entries[ref]["name"]:
            raise KubeconfigError(
                f"{source}: context {entries['context']['name']!r} refers to {ref} {context.get(ref)!r}, "
                f"but the file's {ref} is {entries[ref]['name']!r}",
                f"fetch {K3S_KUBECONFIG} again",
            )
    if not isinstance(entries["cluster"]["cluster"].get("certificate-authority-data"), str):
        raise KubeconfigError(
            f"{source}: the cluster has no certificate-authority-data, so the API server cannot be verified",
            f"fetch {K3S_KUBECONFIG} from the server (K3s always embeds its CA)",
        )

    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("clusters", "users", "contexts")}
    out["clusters"] = [{"name": name, "cluster": {**copy.deepcopy(entries["cluster"]["cluster"]), "server": server}}]
    out["users"] = [{"name": name, "user": copy.deepcopy(entries["user"]["user"])}]
    out["contexts"] = [{"name": name, "context": {**copy.deepcopy(context), "cluster": name, "user": name}}]
    out["current-context"] = name
    return out


def ca_pem(config: dict, *, source: str) -> bytes:
    """The PEM CA certificate(s) of a rewritten kubeconfig's (only) cluster, to verify the API server."""
    try:
        data = config["clusters"][0]["cluster"]["certificate-authority-data"]
        pem = base64.b64decode(data, validate=True)
    except (KeyError, IndexError, TypeError, binascii.Error) as e:
        raise KubeconfigError(
            f"{source}: certificate-authority-data is missing or not base64 ({e})", f"fetch {K3S_KUBECONFIG} again"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise KubeconfigError(
            f"{source}: certificate-authority-data holds no PEM certificate", f"fetch {K3S_KUBECONFIG} again"
        )
    return pem


def server_certificate(url: str, ca_pem: bytes, timeout: float = 10.0, *, source: str) -> x509.Certificate:
    """The certificate the API server at `url` serves, after checking it is signed by `ca_pem`.

    The host name is deliberately not checked here: `check_sans` does that, with a better message.
    Raises KubeconfigError when the server cannot be reached or its chain does not verify.
    """
    host, port = _check_server(url, source=source)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED
    context.check_hostname = False
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))
    except ssl.SSLError as e:
        raise KubeconfigError(
            f"{source}: certificate-authority-data is not a usable CA certificate ({e.reason or e})",
            f"fetch {K3S_KUBECONFIG} again",
        ) from None

    def handshake() -> bytes:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            return tls.getpeercert(binary_form=True)

    # A handshake that times out or a connection reset is tried again (a K3s just restarted, a
    # busy host); a certificate that does not verify is final.
    policy = retrying(
        lambda exc: isinstance(exc, OSError) and not isinstance(exc, ssl.SSLCertVerificationError),
        attempts=3,
        first=1.0,
        cap=4.0,
    )
    try:
        der = policy(handshake)
    except ssl.SSLCertVerificationError as e:
        raise KubeconfigError(
            f"{source}: the API server at {url} presents a certificate not signed by this kubeconfig's CA "
            f"({e.verify_message})",
            f"check that {host} is the server the kubeconfig came from "
            "(a reinstalled K3s has a new CA: fetch the kubeconfig again)",
        ) from None
    except (OSError, ssl.SSLError) as e:  # refused, unreachable, timeout, TLS failure
        raise KubeconfigError(
            f"{source}: cannot reach the API server at {url} ({e})",
            f"check that K3s runs there and port {port} is open to this machine",
        ) from None
    return x509.load_der_x509_certificate(der)


def check_sans(cert: x509.Certificate, address: str, *, source: str) -> None:
    """Raise KubeconfigError unless `cert` is valid for `address` (an IPv4/IPv6 address or DNS name).

    An IP is matched against IP SANs only and a name against DNS SANs only, as kubectl does.
    """
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    ips = sans.get_values_for_type(x509.IPAddress)
    names = [n.lower().rstrip(".") for n in sans.get_values_for_type(x509.DNSName)]
    ip = _ip(address)
    if ip is not None:
        if ip in ips:
            return
    else:
        wanted = address.lower().rstrip(".")
        if any(_dns_match(pattern, wanted) for pattern in names):
            return
    valid_for = ", ".join([*names, *(str(i) for i in ips)]) or "no names at all"
    raise KubeconfigError(
        f"{source}: the API server certificate is not valid for {address} (it is valid for {valid_for})", SAN_FIX
    )


def merge(existing: dict | None, new: dict) -> dict:
    """`new` merged into `existing` (a ~/.kube/config): entries of the same name are replaced by
    the new ones in place, other entries kept in order, current-context set to the new context.

    A missing file (None) or `clusters: null` counts as empty. Neither argument is modified.
    """
    if existing is None:
        existing = {}
    if not isinstance(existing, dict):
        raise KubeconfigError("existing kubeconfig is not a mapping", "move it aside and run again")
    merged = copy.deepcopy(existing)
    merged.setdefault("apiVersion", "v1")
    merged.setdefault("kind", "Config")
    for section, _ in SECTIONS:
        old = merged.get(section) or []
        if not isinstance(old, list):
            raise KubeconfigError(f"existing kubeconfig: {section} is not a list", "repair or move the file aside")
        incoming = {e["name"]: copy.deepcopy(e) for e in new.get(section) or []}
        result = []
        for entry in old:
            name = entry.get("name") if isinstance(entry, dict) else None
            if name in incoming:
                result.append(incoming.pop(name))  # new wins: a reinstalled cluster has a new CA and client cert
            else:
                result.append(entry)
        result.extend(incoming.values())
        merged[section] = result
    if new.get("current-context"):
        merged["current-context"] = new["current-context"]
    return merged


def write(path: Path, config: dict, *, merge_into_existing: bool) -> WriteResult:
    """Save `config` at `path` (merged into what is there when `merge_into_existing`).

    Atomic (temporary file in the same directory, fsync, rename), mode 0600 from creation, parent
    directory created 0700. Unchanged content is not rewritten; changed content keeps the old file
    as `<path>.bak` (0600). An existing file that is not a kubeconfig is refused, never clobbered.
    """
    path = Path(path).expanduser()
    with _file_errors(path):
        return _write(path, config, merge_into_existing)


@contextmanager
def _file_errors(path: Path) -> Iterator[None]:
    """A kubeconfig we may not read or write (often root's, left by `sudo cp`) is one clear line."""
    try:
        yield
    except OSError as exc:
        raise KubeconfigError(
            f"{path}: {exc.strerror or exc}", f"make it yours (e.g. sudo chown $USER {path}) or pass another path"
        ) from None


def _write(path: Path, config: dict, merge_into_existing: bool) -> WriteResult:
    if path.is_symlink():  # a ~/.kube/config symlinked elsewhere: update the target, keep the link
        path = path.resolve()
    old_bytes = path.read_bytes() if path.exists() else None
    existing = None
    if old_bytes is not None:
        existing = _parse(_decode(old_bytes, str(path), existing_file=True), str(path), existing_file=True)
    final = merge(existing, config) if merge_into_existing else config
    if existing == final:
        return WriteResult(path=path, changed=False, backup=None)

    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o700)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
    backup = None
    if old_bytes is not None:
        backup = path.with_name(path.name + ".bak")
        _atomic_write(backup, old_bytes)
    _atomic_write(path, yaml.safe_dump(final, sort_keys=False, default_flow_style=False).encode())
    return WriteResult(path=path, changed=True, backup=backup)


def forget(path: Path, name: str) -> WriteResult:
    """Remove the cluster, user and context called `name` (what `write` added), keeping the rest;
    the current context is cleared when it was that one. A missing file or entry changes nothing."""
    path = Path(path).expanduser()
    with _file_errors(path):
        return _forget(path, name)


def _forget(path: Path, name: str) -> WriteResult:
    if path.is_symlink():
        path = path.resolve()
    if not path.exists():
        return WriteResult(path=path, changed=False, backup=None)
    old_bytes = path.read_bytes()
    existing = _parse(_decode(old_bytes, str(path), existing_file=True), str(path), existing_file=True) or {}
    final = dict(existing)
    for section, _ in SECTIONS:
        final[section] = [e for e in existing.get(section) or [] if e.get("name") != name]
    if final.get("current-context") == name:
        final["current-context"] = ""
    removed = any(len(final[section]) != len(existing.get(section) or []) for section, _ in SECTIONS)
    if not removed and final.get("current-context") == existing.get("current-context"):
        return WriteResult(path=path, changed=False, backup=None)
    backup = path.with_name(path.name + ".bak")
    _atomic_write(backup, old_bytes)
    _atomic_write(path, yaml.safe_dump(final, sort_keys=False, default_flow_style=False).encode())
    return WriteResult(path=path, changed=True, backup=backup)


READ_FIX = f"point --kubeconfig (or $KUBECONFIG) at a kubeconfig, or run {command('kubeconfig')} to fetch one"


def check_file(path: Path | str, *, fix: str = READ_FIX) -> dict | None:
    """The kubeconfig at `path`, read through k3stack.reader and checked for shape (what `write`
    would accept), None for an empty file. Raises KubeconfigError `path[:line]: what — fix: how`
    (`fix` for a file that is there but not a kubeconfig) for a file that is missing, unreadable,
    not UTF-8, not YAML or not a kubeconfig: call it before handing a user's --kubeconfig to the
    kubernetes client, whose errors for such files are tracebacks or several lines."""
    shown = str(path)
    try:
        text = reader.read_text(Path(path).expanduser(), shown=shown)
    except reader.ReadError as exc:
        raise KubeconfigError(exc.what, exc.hint) from None
    return _parse(text, shown, fix=fix)


# -- helpers ----------------------------------------------------------------------------------
def _fix(existing_file: bool) -> str:
    return "move it aside (k3stack does not overwrite it) and run again" if existing_file else "fetch it again"


def _decode(data: bytes, source: str, *, existing_file: bool = False) -> str:
    """`data` as UTF-8 text; KubeconfigError naming the line of the first byte that is not."""
    try:
        return reader.decode(data, source)
    except reader.ReadError as exc:
        raise KubeconfigError(exc.what, _fix(existing_file)) from None


def _parse(text: str, source: str, *, existing_file: bool = False, fix: str | None = None) -> dict | None:
    """The kubeconfig in `text`, None when empty; KubeconfigError when it is not one (YAML errors
    as `source:line: not valid YAML (problem) — fix: ...`, through k3stack.reader)."""
    fix = fix or _fix(existing_file)
    try:
        data = reader.yaml_document(text, source, hint=fix)
    except reader.ReadError as exc:
        raise KubeconfigError(exc.what, exc.hint) from None
    if data is None:
        return None
    # kubectl accepts a file without `kind`, but not one without any kubeconfig key: a stray YAML
    # mapping (values.yaml, a manifest) is refused, never merged into.
    shaped = isinstance(data, dict) and (
        "kind" in data or any(key in data for key in ("clusters", "contexts", "users", "current-context"))
    )
    if not shaped or data.get("kind", "Config") != "Config":
        raise KubeconfigError(f"{source}: not a kubeconfig (expected kind: Config)", fix)
    for section, _ in SECTIONS:
        if data.get(section) is not None and not isinstance(data[section], list):
            raise KubeconfigError(f"{source}: {section} is not a list", fix)
        for index, entry in enumerate(data.get(section) or []):
            if not isinstance(entry, dict):  # `forget` and `merge` read entry names
                raise KubeconfigError(f"{source}: {section}[{index}] is not a mapping", fix)
            if problem := _entry_problem(section, entry):
                raise KubeconfigError(f"{source}: {section}[{index}] {problem}", fix)
    current = data.get("current-context")
    if current is not None and not isinstance(current, str):
        raise KubeconfigError(f"{source}: current-context is {type(current).__name__} {current!r}, not a name", fix)
    return data


# The fields of a kubeconfig entry that hold text, and those that hold base64 (client-go's
# clientcmd/api/v1 types: strings and []byte, the latter base64 in YAML).
TEXT_FIELDS = {
    "cluster": ("server", "certificate-authority", "tls-server-name", "proxy-url"),
    "user": ("client-certificate", "client-key", "token", "tokenFile", "username", "password"),
    "context": ("cluster", "user", "namespace"),
}
BASE64_FIELDS = {
    "cluster": ("certificate-authority-data",),
    "user": ("client-certificate-data", "client-key-data"),
    "context": (),
}


def _entry_problem(section: str, entry: dict) -> str | None:
    """What is wrong with one entry of `section` (clusters, users, contexts) for the kubernetes
    client, None when nothing: a name that is text, the inner mapping a mapping, its text fields
    text and its *-data fields valid base64 (the client's own errors for these are Python
    internals such as "argument of type 'int' is not iterable" or a binascii traceback)."""
    singular = dict(SECTIONS)[section]
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        return f"has name {name!r}, not a name"
    inner = entry.get(singular)
    if inner is None:
        return None
    if not isinstance(inner, dict):
        return f"({name}): {singular} is {type(inner).__name__} {inner!r}, not a mapping"
    for field_name in TEXT_FIELDS[singular]:
        value = inner.get(field_name)
        if value is not None and not isinstance(value, str):
            return f"({name}): {singular}.{field_name} is {type(value).__name__} {value!r}, not text"
    for field_name in BASE64_FIELDS[singular]:
        value = inner.get(field_name)
        if value is None:
            continue
        try:
            # Line breaks are allowed, as Go's base64 decoder (client-go) skips them.
            base64.b64decode("".join(value.split()) if isinstance(value, str) else "-", validate=True)
        except (binascii.Error, ValueError):
            return f"({name}): {singular}.{field_name} is not valid base64"
    return None


def _check_server(url: str, *, source: str) -> tuple[str, int]:
    """(host, port) of an https:// API server URL; KubeconfigError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise KubeconfigError(
            f"{source}: API server URL {url!r} is not https://<host>[:port]", "use e.g. https://203.0.113.10:6443"
        )
    return parts.hostname, port


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as an IP ("[::1]" and "::1" alike), or None for a DNS name."""
    try:
        return ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None


def _dns_match(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or a left-most "*" label standing for exactly one label."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readable by the owner only at every moment, never half-written."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Created 0600 by open() itself (no chmod after the fact, so no moment with wider access).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask can only remove bits: make it exactly 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
