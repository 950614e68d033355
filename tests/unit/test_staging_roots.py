"""The staging roots `inv smoke --insecure` trusts: shipped in k3stack/certs, pinned by SHA-256 in
k3stack/smoke.py, and exactly these two (source and fingerprints: the PEM file's header)."""

from __future__ import annotations

import hashlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from k3stack import smoke as sm
from tests.testbed.ingress import TestCA

# Let's Encrypt's staging roots as published at https://letsencrypt.org/certs/staging/
# (letsencrypt-stg-root-x1.pem, letsencrypt-stg-root-x2.pem): SHA-256 of the DER.
PRETEND_PEAR_X1 = "e70570a989f8565aabdf7cae27abd1621872d6a3f811e3fef27e3dba02912198"
BOGUS_BROCCOLI_X2 = "9b2a339fe6a3e85585c4cd75536cb8c1cf7cd603b9a64bec2521858ae48da85d"


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_the_shipped_file_holds_exactly_the_two_staging_roots_with_their_fingerprints():
    certs = x509.load_pem_x509_certificates(sm.STAGING_ROOTS.read_bytes())
    by_fingerprint = {fingerprint(c): c for c in certs}
    assert len(certs) == 2
    assert set(by_fingerprint) == {PRETEND_PEAR_X1, BOGUS_BROCCOLI_X2}
    names = {fp: c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for fp, c in by_fingerprint.items()}
    assert names == {PRETEND_PEAR_X1: "(STAGING) Pretend Pear X1", BOGUS_BROCCOLI_X2: "(STAGING) Bogus Broccoli X2"}
    for cert in certs:  # roots: self-issued CA certificates
        assert cert.issuer == cert.subject
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.verify_directly_issued_by(cert)  # the PEM text was copied without a flipped character
    # the file's header says the same as the code pins
    header = sm.STAGING_ROOTS.read_text()
    for fp in (PRETEND_PEAR_X1, BOGUS_BROCCOLI_X2):
        assert ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper() in header


def test_the_code_pins_the_same_fingerprints():
    assert sm.STAGING_ROOT_FINGERPRINTS == {
        PRETEND_PEAR_X1: "(STAGING) Pretend Pear X1",
        BOGUS_BROCCOLI_X2: "(STAGING) Bogus Broccoli X2",
    }
    loaded = x509.load_pem_x509_certificates(sm.staging_roots().encode())
    assert {fingerprint(c) for c in loaded} == {PRETEND_PEAR_X1, BOGUS_BROCCOLI_X2}


@pytest.mark.parametrize("change", ["added", "replaced", "missing", "empty", "absent"])
def test_a_staging_roots_file_holding_anything_else_is_refused(tmp_path, monkeypatch, change):
    shipped = sm.STAGING_ROOTS.read_text()
    blocks = [b for b in shipped.split("-----END CERTIFICATE-----") if "BEGIN" in b]
    x1, x2 = (b[b.index("-----BEGIN") :] + "-----END CERTIFICATE-----\n" for b in blocks)
    impostor = TestCA("(STAGING) Pretend Pear X1").pem.decode()
    text = {
        "added": shipped + impostor,
        "replaced": x1 + impostor,
        "missing": x2,
        "empty": "# nothing\n",
    }.get(change)
    path = tmp_path / "roots.pem"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(sm, "STAGING_ROOTS", path)
    with pytest.raises(sm.SmokeConfigError) as caught:
        sm.staging_roots()
    assert "git checkout -- k3stack/certs" in caught.value.hint
    with pytest.raises(sm.SmokeConfigError):  # so --insecure cannot start on it
        sm.Browser(config(insecure=True))


def config(**overrides) -> sm.SmokeConfig:
    values = {
        "stack_namespace": "llm-stack",
        "monitoring_namespace": "monitoring",
        "chat_host": "chat.smoke.test",
        "monitor_host": "monitor.smoke.test",
        "models": (),
        "webui_version": "v0.11.0",
        "admin_email": "admin@smoke.test",
        "admin_password": "admin-password-1234",
        **overrides,
    }
    return sm.SmokeConfig(**values)


def test_insecure_trusts_the_staging_roots_and_nothing_else():
    context = sm.Browser(config(insecure=True))._context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    trusted = {dict(n[0] for n in c["subject"])["commonName"] for c in context.get_ca_certs()}
    assert trusted == {"(STAGING) Pretend Pear X1", "(STAGING) Bogus Broccoli X2"}
    assert context.cert_store_stats()["x509_ca"] == 2  # no system CA besides them


def test_without_insecure_the_context_verifies_too(tmp_path):
    for context in (
        sm.Browser(config())._context,
        sm.Browser(config(ca_bundle=str(TestCA().write(tmp_path / "ca.pem"))))._context,
    ):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
    bundled = sm.Browser(config(ca_bundle=str(tmp_path / "ca.pem")))._context
    assert [dict(n[0] for n in c["subject"])["commonName"] for c in bundled.get_ca_certs()] == ["k3stack test CA"]


def test_insecure_with_a_ca_bundle_is_refused_naming_both(tmp_path):
    with pytest.raises(sm.SmokeConfigError) as caught:
        config(insecure=True, ca_bundle=str(tmp_path / "ca.pem"))
    assert "--insecure trusts only Let's Encrypt's staging roots" in caught.value.what
    assert "drop --ca-bundle (or SMOKE_CA_BUNDLE)" in caught.value.hint
    assert isinstance(caught.value, ValueError)  # face.run_smoke turns it into one `error: smoke: …` line
