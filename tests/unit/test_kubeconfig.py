"""kubeconfig: structural rewrite, SAN check against real certificates and a real TLS server, merge, safe write."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k3stack import kubeconfig
from k3stack.kubeconfig import KubeconfigError

SERVER = "https://203.0.113.10:6443"


# -- certificates -----------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_ca(cn: str = "k3s-server-ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),  # keyCertSign, cRLSign
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca: x509.Certificate, ca_key, sans: list[x509.GeneralName] | None):
    """A serving certificate signed by `ca`; `sans` None leaves out the SAN extension altogether."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder("k3s", ca.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def k3s_yaml(ca: x509.Certificate | None = None) -> str:
    """A kubeconfig as K3s writes it to /etc/rancher/k3s/k3s.yaml."""
    ca_data = base64.b64encode(pem(ca) if ca else b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return f"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca_data.decode()}
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: Q0xJRU5UQ0VSVA==
    client-key-data: Q0xJRU5US0VZ
"""


# -- rewrite ----------------------------------------------------------------------------------
def test_rewrite_points_at_the_server_and_renames_everything():
    out = kubeconfig.rewrite(k3s_yaml(), server=SERVER, name="prod", source="k3s.yaml")
    assert out["clusters"] == [
        {
            "name": "prod",
            "cluster": {
                "certificate-authority-data": yaml.safe_load(k3s_yaml())["clusters"][0]["cluster"][
                    "certificate-authority-data"
                ],
                "server": SERVER,
            },
        }
    ]
    assert out["users"] == [
        {"name": "prod", "user": {"client-certificate-data": "Q0xJRU5UQ0VSVA==", "client-key-data": "Q0xJRU5US0VZ"}}
    ]
    assert out["contexts"] == [{"name": "prod", "context": {"cluster": "prod", "user": "prod"}}]
    assert out["current-context"] == "prod"
    assert out["preferences"] == {}
    assert "default" not in yaml.safe_dump(out)


def test_rewrite_keeps_a_token_user_and_ipv6_server():
    text = k3s_yaml().replace(
        "    client-certificate-data: Q0xJRU5UQ0VSVA==\n    client-key-data: Q0xJRU5US0VZ\n",
        "    token: K10abc::server:x\n",
    )
    out = kubeconfig.rewrite(text, server="https://[2001:db8::1]:6443", name="v6", source="k3s.yaml")
    assert out["users"][0]["user"] == {"token": "K10abc::server:x"}
    assert out["clusters"][0]["cluster"]["server"] == "https://[2001:db8::1]:6443"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clusters: [\n", "k3s.yaml:2: not valid YAML"),
        ("", "file is empty"),
        ("- a\n- b\n", "not a kubeconfig"),
        ("kind: Pod\n", "not a kubeconfig"),
        (k3s_yaml().replace("kind: Config", "kind: Config\nclusters: {}"), "clusters is not a list"),
        (
            k3s_yaml().replace("users:\n- name: default", "users:\n- name: other\n  user: {}\n- name: default"),
            "exactly one entry in users, found 2",
        ),
        (k3s_yaml().replace("    cluster: default\n", "    cluster: elsewhere\n"), "refers to cluster 'elsewhere'"),
        (k3s_yaml().replace("  name: default\ncontexts", "  nom: default\ncontexts"), "has name None, not a name"),
        (
            k3s_yaml().replace("    certificate-authority-data:", "    insecure: true\n    x:"),
            "no certificate-authority-data",
        ),
    ],
)
def test_rewrite_refuses_what_k3s_does_not_write(text, expected):
    with pytest.raises(KubeconfigError) as err:
        kubeconfig.rewrite(text, server=SERVER, name="prod", source="web-1:/etc/rancher/k3s/k3s.yaml")
    message = str(err.value)
    assert message.startswith("web-1:/etc/rancher/k3s/k3s.yaml:")  # :line: for YAML errors
    assert expected in message
    assert "fix:" in message
    assert "\n" not in message


def test_rewrite_error_for_two_clusters_says_how_many():
    doc = yaml.safe_load(k3s_yaml())
    doc["clusters"].append({"name": "b", "cluster": {"server": "https://x:6443"}})
    with pytest.raises(KubeconfigError, match=r"exactly one entry in clusters, found 2"):
        kubeconfig.rewrite(yaml.safe_dump(doc), server=SERVER, name="prod", source="k3s.yaml")


@pytest.mark.parametrize("server", ["http://203.0.113.10:6443", "203.0.113.10:6443", "https://", "https://h:99999"])
def test_rewrite_refuses_a_bad_server_url(server):
    with pytest.raises(KubeconfigError, match=r"API endpoint: .*not https://<host>\[:port\] — fix: use e.g."):
        kubeconfig.rewrite(k3s_yaml(), server=server, name="prod", source="k3s.yaml")


def test_rewrite_refuses_an_empty_name():
    with pytest.raises(KubeconfigError, match="context name '' is empty"):
        kubeconfig.rewrite(k3s_yaml(), server=SERVER, name="", source="k3s.yaml")


def test_ca_pem_decodes_the_embedded_ca():
    ca, _ = make_ca()
    out = kubeconfig.rewrite(k3s_yaml(ca), server=SERVER, name="prod", source="k3s.yaml")
    assert kubeconfig.ca_pem(out, source="k3s.yaml") == pem(ca)
    out["clusters"][0]["cluster"]["certificate-authority-data"] = "%%%"
    with pytest.raises(KubeconfigError, match=r"k3s\.yaml: certificate-authority-data is missing or not base64"):
        kubeconfig.ca_pem(out, source="k3s.yaml")


# -- SAN check --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def api_cert(ca):
    cert, _ = make_leaf(
        *ca,
        [
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("api.example.com"),
            x509.DNSName("*.k3s.example.org"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("203.0.113.10")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::10")),
        ],
    )
    return cert


@pytest.mark.parametrize(
    "address",
    [
        "203.0.113.10",
        "api.example.com",
        "API.Example.com.",
        "2001:db8::10",
        "2001:0db8:0000:0000:0000:0000:0000:0010",  # same IPv6 address, other spelling
        "[2001:db8::10]",
        "node1.k3s.example.org",
    ],
)
def test_check_sans_accepts_addresses_in_the_certificate(api_cert, address):
    kubeconfig.check_sans(api_cert, address, source="web-1")


@pytest.mark.parametrize(
    "address",
    [
        "203.0.113.11",
        "other.example.com",
        "2001:db8::11",
        "a.b.k3s.example.org",  # a wildcard stands for one label only
        "k3s.example.org",
        "::ffff:203.0.113.10",  # IPv4-mapped IPv6 is another address
    ],
)
def test_check_sans_refuses_addresses_not_in_the_certificate(api_cert, address):
    with pytest.raises(KubeconfigError) as err:
        kubeconfig.check_sans(api_cert, address, source="web-1:6443")
    message = str(err.value)
    assert message.startswith(f"web-1:6443: the API server certificate is not valid for {address} ")
    assert "api.example.com" in message
    assert "203.0.113.10" in message
    assert "K3S_TLS_SAN" in message
    assert "k3s certificate rotate" in message
    assert "\n" not in message


def test_check_sans_does_not_match_an_ip_against_dns_names(ca):
    cert, _ = make_leaf(*ca, [x509.DNSName("203.0.113.10")])
    with pytest.raises(KubeconfigError, match=r"not valid for 203\.0\.113\.10 "):
        kubeconfig.check_sans(cert, "203.0.113.10", source="web-1")


def test_check_sans_with_no_san_extension(ca):
    cert, _ = make_leaf(*ca, None)
    with pytest.raises(KubeconfigError, match=r"it is valid for no names at all\) — fix: add it to K3S_TLS_SAN"):
        kubeconfig.check_sans(cert, "203.0.113.10", source="web-1")


# -- server_certificate against a real TLS server ---------------------------------------------
@pytest.fixture
def tls_server(tmp_path, ca):
    """A TLS server on 127.0.0.1 serving a certificate signed by `ca`; yields (url, served cert)."""
    cert, key = make_leaf(*ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(pem(cert))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)  # until the client closes
                except (ssl.SSLError, OSError):
                    pass  # a client refusing our certificate aborts the handshake

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", cert
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_server_certificate_verifies_the_chain_and_returns_the_served_cert(tls_server, ca):
    url, served = tls_server
    cert = kubeconfig.server_certificate(url, pem(ca[0]), 5, source="web-1")
    assert cert == served
    kubeconfig.check_sans(cert, "127.0.0.1", source="web-1")


def test_server_certificate_refuses_a_server_signed_by_another_ca(tls_server):
    url, _ = tls_server
    other_ca, _ = make_ca("someone-else")
    with pytest.raises(KubeconfigError) as err:
        kubeconfig.server_certificate(url, pem(other_ca), 5, source="web-1:/etc/rancher/k3s/k3s.yaml")
    message = str(err.value)
    assert message.startswith(f"web-1:/etc/rancher/k3s/k3s.yaml: the API server at {url} presents a certificate")
    assert "not signed by this kubeconfig's CA" in message
    assert "fetch the kubeconfig again" in message


def test_server_certificate_reports_an_unreachable_server(ca):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    # nothing listens on `port` any more
    with pytest.raises(KubeconfigError, match=rf"web-1: cannot reach the API server .*port {port} is open"):
        kubeconfig.server_certificate(f"https://127.0.0.1:{port}", pem(ca[0]), 2, source="web-1")


def test_server_certificate_refuses_a_ca_that_is_not_a_certificate():
    with pytest.raises(KubeconfigError, match="web-1: certificate-authority-data is not a usable CA certificate"):
        kubeconfig.server_certificate("https://127.0.0.1:1", b"garbage", 1, source="web-1")


# -- merge ------------------------------------------------------------------------------------
def _config(name: str, ca_data: str, server: str = SERVER) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": name, "user": {"token": ca_data + "-token"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def test_merge_replaces_the_stale_entry_and_keeps_the_others_in_order():
    existing = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {"colors": True},
        "clusters": [
            {"name": "a", "cluster": {"server": "https://a:6443"}},
            {"name": "prod", "cluster": {"server": SERVER, "certificate-authority-data": "T0xE"}},
            {"name": "z", "cluster": {"server": "https://z:6443"}},
        ],
        "users": [{"name": "prod", "user": {"token": "OLD-token"}}, {"name": "a", "user": {"token": "a"}}],
        "contexts": [{"name": "a", "context": {"cluster": "a", "user": "a"}}],
        "current-context": "a",
    }
    before = yaml.safe_dump(existing)
    merged = kubeconfig.merge(existing, _config("prod", "TkVX"))
    assert [c["name"] for c in merged["clusters"]] == ["a", "prod", "z"]
    assert merged["clusters"][1]["cluster"]["certificate-authority-data"] == "TkVX"
    assert merged["users"] == [{"name": "prod", "user": {"token": "TkVX-token"}}, {"name": "a", "user": {"token": "a"}}]
    assert [c["name"] for c in merged["contexts"]] == ["a", "prod"]
    assert merged["current-context"] == "prod"
    assert merged["preferences"] == {"colors": True}
    assert yaml.safe_dump(existing) == before  # the input is not modified


@pytest.mark.parametrize("existing", [None, {}, {"clusters": None, "users": None, "contexts": None}])
def test_merge_into_nothing_gives_the_new_config(existing):
    new = _config("prod", "TkVX")
    assert kubeconfig.merge(existing, new) == new


# -- write ------------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)  # what most users have: files 0644 unless the code says otherwise
    yield
    os.umask(old)


def test_write_creates_the_file_0600_and_the_directory_0700(tmp_path, loose_umask):
    path = tmp_path / "home" / ".kube" / "config"
    result = kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=True)
    assert result == kubeconfig.WriteResult(path=path, changed=True, backup=None)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert yaml.safe_load(path.read_text()) == _config("prod", "TkVX")
    assert [p.name for p in path.parent.iterdir()] == ["config"]  # no temporary file left behind


def test_write_never_has_a_moment_with_a_wider_mode(tmp_path, monkeypatch):
    """The file is 0600 from open() on, even with umask 0: fchmod is a guard, not the fix."""
    seen = []
    real_fchmod = os.fchmod

    def spy(fd, mode):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fchmod(fd, mode)

    monkeypatch.setattr(kubeconfig.os, "fchmod", spy)
    old = os.umask(0)
    try:
        kubeconfig.write(tmp_path / "config", _config("a", "QQ=="), merge_into_existing=True)
        kubeconfig.write(tmp_path / "config", _config("b", "Qg=="), merge_into_existing=True)  # + backup
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600, 0o600]
    assert _mode(tmp_path / "config") == 0o600


def test_write_twice_changes_nothing_the_second_time(tmp_path):
    path = tmp_path / "config"
    kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=True)
    mtime = path.stat().st_mtime_ns
    again = kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=True)
    assert again == kubeconfig.WriteResult(path=path, changed=False, backup=None)
    assert path.stat().st_mtime_ns == mtime
    assert not (tmp_path / "config.bak").exists()


def test_write_merges_new_wins_and_keeps_a_0600_backup(tmp_path, loose_umask):
    path = tmp_path / "config"
    old_text = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "other", "cluster": {"server": "https://other:6443"}},
                {"name": "prod", "cluster": {"server": SERVER, "certificate-authority-data": "T0xE"}},
            ],
            "users": None,
            "contexts": [{"name": "other", "context": {"cluster": "other", "user": "other"}}],
            "current-context": "other",
        }
    )
    path.write_text(old_text)
    path.chmod(0o644)  # a file someone made readable: ours must not stay that way
    result = kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=True)
    assert result.changed
    assert result.backup == tmp_path / "config.bak"
    assert result.backup.read_text() == old_text
    assert _mode(result.backup) == 0o600
    assert _mode(path) == 0o600
    written = yaml.safe_load(path.read_text())
    assert [(c["name"], c["cluster"].get("certificate-authority-data")) for c in written["clusters"]] == [
        ("other", None),
        ("prod", "TkVX"),
    ]
    assert written["current-context"] == "prod"
    assert [c["name"] for c in written["contexts"]] == ["other", "prod"]


def test_write_without_merge_replaces_the_file(tmp_path):
    path = tmp_path / "prod.yaml"
    kubeconfig.write(path, _config("a", "QQ=="), merge_into_existing=False)
    result = kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=False)
    assert result.changed
    assert yaml.safe_load(path.read_text()) == _config("prod", "TkVX")
    assert yaml.safe_load(result.backup.read_text()) == _config("a", "QQ==")


def test_write_through_a_symlink_updates_the_target(tmp_path):
    target = tmp_path / "real-config"
    kubeconfig.write(target, _config("a", "QQ=="), merge_into_existing=False)
    link = tmp_path / "config"
    link.symlink_to(target)
    kubeconfig.write(link, _config("prod", "TkVX"), merge_into_existing=True)
    assert link.is_symlink()
    assert [c["name"] for c in yaml.safe_load(target.read_text())["clusters"]] == ["a", "prod"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("clusters: [\n  - a\n  b: c\n", "config:2: not valid YAML"),
        ("just some text\n", "not a kubeconfig"),
        ("replicaCount: 2\nimage: {tag: v1}\n", "not a kubeconfig"),  # a stray values.yaml: no kind, no kubeconfig key
        ("kind: Config\nclusters: {a: 1}\n", "clusters is not a list"),
    ],
)
def test_write_refuses_to_clobber_a_file_that_is_not_a_kubeconfig(tmp_path, content, expected):
    path = tmp_path / "config"
    path.write_text(content)
    for merge_into_existing in (True, False):
        with pytest.raises(KubeconfigError) as err:
            kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=merge_into_existing)
        message = str(err.value)
        assert message.startswith(f"{path}:")  # path:line: for YAML errors
        assert expected in message
        assert "fix: move it aside" in message
    assert path.read_text() == content
    assert not (tmp_path / "config.bak").exists()


def test_write_treats_an_empty_file_as_no_config(tmp_path):
    path = tmp_path / "config"
    path.write_text("")
    result = kubeconfig.write(path, _config("prod", "TkVX"), merge_into_existing=True)
    assert result.changed
    assert yaml.safe_load(path.read_text()) == _config("prod", "TkVX")
    assert result.backup.read_text() == ""


def test_a_kubeconfig_path_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    config = kubeconfig.rewrite(k3s_yaml(), server=SERVER, name="k3stack", source="k3s.yaml")
    target = blocker / "config"
    assert _split(lambda: kubeconfig.write(target, config, merge_into_existing=True)) == (
        f"{target}: Not a directory",
        f"make it yours (e.g. sudo chown $USER {target}) or pass another path",
    )
    (tmp_path / "dir" / "config").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(KubeconfigError, match=r"fix: make it yours"):
        kubeconfig.forget(tmp_path / "dir" / "config", "k3stack")


# -- each refusal as written, and the pure helpers ----------------------------------------------------
def _refusal(call) -> str:
    with pytest.raises(KubeconfigError) as err:
        call()
    return str(err.value)


def _split(call) -> tuple[str, str]:
    """(what, hint) of the KubeconfigError `call` raises: the problem and its fix, apart."""
    with pytest.raises(KubeconfigError) as err:
        call()
    return err.value.what, err.value.hint


def _k3s_doc(**changes) -> str:
    doc = yaml.safe_load(k3s_yaml())
    for path, value in changes.items():
        section, field = path.split("__")
        doc[section][0][field] = value
    return yaml.safe_dump(doc)


def test_rewrite_refusals_as_written():
    def rewrite(text, name="p"):
        return lambda: kubeconfig.rewrite(text, server=SERVER, name=name, source="s")

    fix = "fetch /etc/rancher/k3s/k3s.yaml again"
    assert _split(rewrite(k3s_yaml(), " p")) == (
        "s: context name ' p' is empty or has spaces",
        "set a name like my-cluster",
    )
    assert _split(rewrite(k3s_yaml(), None)) == (
        "s: context name None is empty or has spaces",
        "set a name like my-cluster",
    )
    assert _split(rewrite(k3s_yaml().replace("users:\n- name: default", "x:\n- name: default"))) == (
        "s: expected exactly one entry in users, found 0",
        "fetch the kubeconfig K3s writes (/etc/rancher/k3s/k3s.yaml), not a merged one",
    )
    assert _split(rewrite(_k3s_doc(contexts__context={"cluster": "default", "user": "u2"}))) == (
        "s: context 'default' refers to user 'u2', but the file's user is 'default'",
        fix,
    )
    assert _split(rewrite(_k3s_doc(clusters__cluster="x"))) == (
        "s: clusters[0] (default): cluster is str 'x', not a mapping",
        f"{fix} (the file is damaged)",
    )
    assert _split(rewrite(_k3s_doc(users__name=3))) == (
        "s: users[0] has name 3, not a name",
        f"{fix} (the file is damaged)",
    )
    assert _split(rewrite("")) == ("s: file is empty", "check that K3s is running and wrote /etc/rancher/k3s/k3s.yaml")
    # printed as every k3stack error is: `<what> — fix: <hint>`
    assert (
        _refusal(rewrite("")) == "s: file is empty — fix: check that K3s is running and wrote /etc/rancher/k3s/k3s.yaml"
    )
    assert _refusal(rewrite(b"ok\n\xff")) == "s:2: not UTF-8 text (byte 0xff) — fix: fetch it again"
    assert kubeconfig.rewrite(k3s_yaml().encode(), server=SERVER, name="p", source="s")["current-context"] == "p"


def test_ca_pem_refusals_as_written():
    fix = "fetch /etc/rancher/k3s/k3s.yaml again"
    assert _split(lambda: kubeconfig.ca_pem({"clusters": []}, source="s")) == (
        "s: certificate-authority-data is missing or not base64 (list index out of range)",
        fix,
    )
    not_pem = {"clusters": [{"cluster": {"certificate-authority-data": "aGVsbG8="}}]}
    assert _split(lambda: kubeconfig.ca_pem(not_pem, source="s")) == (
        "s: certificate-authority-data holds no PEM certificate",
        fix,
    )
    for bad in ({}, {"clusters": [{"cluster": {"certificate-authority-data": None}}]}):
        assert "certificate-authority-data is missing or not base64" in _refusal(
            lambda b=bad: kubeconfig.ca_pem(b, source="s")
        )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h", ("h", 443)),
        ("https://h/", ("h", 443)),
        ("https://h:6443", ("h", 6443)),
        ("https://[::1]:7", ("::1", 7)),
        ("https://h:6443/x", None),
        ("https://h:bad", None),
        ("http://h:6443", None),
    ],
)
def test_the_api_server_url_is_https_host_and_port(url, expected):
    if expected:
        assert kubeconfig._check_server(url, source="s") == expected
    else:
        assert _split(lambda: kubeconfig._check_server(url, source="s")) == (
            f"s: API server URL {url!r} is not https://<host>[:port]",
            "use e.g. https://203.0.113.10:6443",
        )


def test_addresses_and_wildcards():
    assert kubeconfig._ip("[::1]") == kubeconfig._ip("::1") == ipaddress.ip_address("::1")
    assert kubeconfig._ip("1.2.3.4") == ipaddress.ip_address("1.2.3.4")
    assert kubeconfig._ip("api.example.com") is None
    assert kubeconfig._dns_match("a.b", "a.b")
    assert kubeconfig._dns_match("*.a.b", "x.a.b")
    assert not kubeconfig._dns_match("*.a.b", ".a.b")  # the wildcard stands for one non-empty label
    assert not kubeconfig._dns_match("*.a.b", "a.b")
    assert not kubeconfig._dns_match("x*.a.b", "xy.a.b")  # only a whole left-most label is a wildcard


def test_check_sans_lists_what_the_certificate_is_valid_for(ca):
    cert, _ = make_leaf(*ca, [x509.DNSName("API.example.com."), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
    kubeconfig.check_sans(cert, "api.example.com", source="s")  # names compared without case and final dot
    assert _split(lambda: kubeconfig.check_sans(cert, "10.0.0.2", source="s")) == (
        "s: the API server certificate is not valid for 10.0.0.2 (it is valid for api.example.com, 10.0.0.1)",
        kubeconfig.SAN_FIX,
    )


def test_merge_refusals_and_what_it_leaves_alone():
    assert _split(lambda: kubeconfig.merge([], {})) == (
        "existing kubeconfig is not a mapping",
        "move it aside and run again",
    )
    assert _split(lambda: kubeconfig.merge({"users": "x"}, {})) == (
        "existing kubeconfig: users is not a list",
        "repair or move the file aside",
    )
    # an entry without a name is kept; a new config without a current context keeps the old one
    merged = kubeconfig.merge({"clusters": ["junk"], "current-context": "a", "kind": "Config", "apiVersion": "v1"}, {})
    assert merged == {
        "clusters": ["junk"],
        "current-context": "a",
        "kind": "Config",
        "apiVersion": "v1",
        "users": [],
        "contexts": [],
    }
    assert kubeconfig.merge({"kind": "X", "apiVersion": "v2"}, {})["kind"] == "X"
    assert kubeconfig.merge({}, {})["apiVersion"] == "v1"


@pytest.mark.parametrize(
    ("text", "existing_file", "expected"),
    [
        ("a: 1\n", False, ("s: not a kubeconfig (expected kind: Config)", "fetch it again")),
        ("- a\n", False, ("s: not a kubeconfig (expected kind: Config)", "fetch it again")),
        (
            "kind: Other\n",
            True,
            (
                "s: not a kubeconfig (expected kind: Config)",
                "move it aside (k3stack does not overwrite it) and run again",
            ),
        ),
        ("kind: Config\nusers:\n- x\n", False, ("s: users[0] is not a mapping", "fetch it again")),
        ("kind: Config\ncontexts: 3\n", False, ("s: contexts is not a list", "fetch it again")),
        ("current-context: 3\n", False, ("s: current-context is int 3, not a name", "fetch it again")),
        (
            "clusters: [\n",
            True,
            (
                "s:2: not valid YAML (did not find expected node content)",
                "move it aside (k3stack does not overwrite it) and run again",
            ),
        ),
    ],
)
def test_a_file_that_is_not_a_kubeconfig_is_refused_with_the_fix_for_its_origin(text, existing_file, expected):
    what, hint = _split(lambda: kubeconfig._parse(text, "s", existing_file=existing_file))
    assert (what.replace("did not find expected node content", ""), hint) == (
        expected[0].replace("did not find expected node content", ""),
        expected[1],
    )


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("kind: Config\n", {"kind": "Config"}),
        ("current-context: a\n", {"current-context": "a"}),
        ("clusters: []\n", {"clusters": []}),
        ("users: []\n", {"users": []}),
        ("contexts: null\n", {"contexts": None}),
        ("", None),
    ],
)
def test_any_kubeconfig_key_makes_a_kubeconfig(text, parsed):
    assert kubeconfig._parse(text, "s") == parsed


def test_the_fix_depends_on_whose_file_it_is():
    assert kubeconfig._fix(True) == "move it aside (k3stack does not overwrite it) and run again"
    assert kubeconfig._fix(False) == "fetch it again"
    assert _refusal(lambda: kubeconfig._decode(b"\xff", "s", existing_file=True)) == (
        "s:1: not UTF-8 text (byte 0xff) — fix: move it aside (k3stack does not overwrite it) and run again"
    )
    assert kubeconfig._decode("é\n".encode(), "s") == "é\n"
    assert _split(lambda: kubeconfig._parse("users: 3\n", "s", fix="F")) == ("s: users is not a list", "F")


def test_every_kubeconfig_problem_is_a_what_and_a_fix_apart(tmp_path, ca):
    """The house shape (k3stack.errors): the problem in `.what`, the fix in `.hint`, printed as
    `<what> — fix: <hint>`; never a fix folded into the problem's own text ("...; fix: ...")."""

    def rewrite(text, name="p", server=SERVER):
        return lambda: kubeconfig.rewrite(text, server=server, name=name, source="s")

    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    stray = tmp_path / "values.yaml"
    stray.write_text("replicaCount: 1\n")
    good = kubeconfig.rewrite(k3s_yaml(), server=SERVER, name="p", source="s")
    cert, _ = make_leaf(*ca, None)
    problems = {
        "bad server": rewrite(k3s_yaml(), server="http://h:6443"),
        "bad name": rewrite(k3s_yaml(), name=" p"),
        "empty file": rewrite(""),
        "not UTF-8": rewrite(b"\xff"),
        "not YAML": rewrite("clusters: [\n"),
        "not a kubeconfig": rewrite("a: 1\n"),
        "two users": rewrite(
            k3s_yaml().replace("users:\n- name: default", "users:\n- name: x\n  user: {}\n- name: default")
        ),
        "no user": rewrite(k3s_yaml().replace("users:\n- name: default", "x:\n- name: default")),
        "damaged entry": rewrite(_k3s_doc(clusters__cluster="x")),
        "entry without its mapping": rewrite(_k3s_doc(users__user=None)),
        "dangling reference": rewrite(_k3s_doc(contexts__context={"cluster": "default", "user": "u2"})),
        "no CA": rewrite(k3s_yaml().replace("    certificate-authority-data:", "    insecure: true\n    x:")),
        "CA not base64": lambda: kubeconfig.ca_pem({"clusters": []}, source="s"),
        "CA not PEM": lambda: kubeconfig.ca_pem(
            {"clusters": [{"cluster": {"certificate-authority-data": "aGk="}}]}, source="s"
        ),
        "CA unusable": lambda: kubeconfig.server_certificate("https://127.0.0.1:1", b"garbage", 1, source="s"),
        "address not in the certificate": lambda: kubeconfig.check_sans(cert, "203.0.113.10", source="s"),
        "existing not a mapping": lambda: kubeconfig.merge([], good),
        "existing section not a list": lambda: kubeconfig.merge({"users": "x"}, good),
        "current-context not a name": lambda: kubeconfig._parse("current-context: [a]\n", "s"),
        "path under a file": lambda: kubeconfig.write(not_a_dir / "config", good, merge_into_existing=True),
        "stray file": lambda: kubeconfig.write(stray, good, merge_into_existing=True),
        "missing file": lambda: kubeconfig.check_file(tmp_path / "absent"),
    }
    for problem, call in problems.items():
        with pytest.raises(KubeconfigError) as err:
            call()
        what, hint = err.value.what, err.value.hint
        assert hint.strip(), f"{problem}: no fix: {what!r}"
        assert "; fix:" not in what, f"{problem}: the fix is inside .what: {what!r}"
        assert "fix:" not in what, f"{problem}: a fix inside .what: {what!r}"
        assert "fix:" not in hint, f"{problem}: printed as '— fix: fix: ...': {hint!r}"
        assert str(err.value) == f"{what} — fix: {hint}", problem
        assert "\n" not in str(err.value), problem


def test_server_certificate_tries_again_after_a_dropped_handshake(tmp_path, ca):
    """A K3s that just restarted (or a busy host) drops the first connection: tried again, not a
    failed bootstrap. (Seen under load: `_ssl.c: The handshake operation timed out`.)"""
    cert, key = make_leaf(*ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    (tmp_path / "s.crt").write_bytes(pem(cert))
    (tmp_path / "s.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            if len(accepted) == 1:
                conn.close()  # the first handshake never happens
                continue
            with conn, context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:
        assert kubeconfig.server_certificate(url, pem(ca[0]), 5, source="web-1") == cert
        assert len(accepted) == 2
    finally:
        listener.close()


def test_the_rewritten_file_keeps_k3s_other_keys_in_order_then_the_three_sections():
    out = kubeconfig.rewrite(k3s_yaml(), server=SERVER, name="prod", source="k3s.yaml")
    # written with sort_keys=False: this is the order of the lines in the file
    assert list(out) == ["apiVersion", "current-context", "kind", "preferences", "clusters", "users", "contexts"]


def test_a_name_holding_an_address_is_no_address():
    assert kubeconfig._ip("X1.2.3.4") is None
    assert kubeconfig._ip("[1.2.3.4]") == ipaddress.ip_address("1.2.3.4")


def test_the_merged_config_shares_nothing_with_either_input():
    existing = {"clusters": [{"name": "a", "cluster": {"server": "https://a:6443"}}]}
    new = _config("prod", "TkVX")
    merged = kubeconfig.merge(existing, new)
    merged["clusters"][0]["cluster"]["server"] = "changed"
    merged["clusters"][1]["cluster"]["server"] = "changed"
    assert existing["clusters"][0]["cluster"]["server"] == "https://a:6443"
    assert new["clusters"][0]["cluster"]["server"] == SERVER
