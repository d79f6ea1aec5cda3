"""The cluster's certificates: CA, head and node certificates, CSRs, fingerprints."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runyard import pki


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.create_ca("test-cluster")


def test_the_ca_is_an_ecdsa_p256_ca_for_ten_years(ca: pki.KeyPair) -> None:
    cert = ca.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lifetime < datetime.timedelta(days=3651)


def test_the_fingerprint_is_the_sha256_of_the_der_certificate(ca: pki.KeyPair) -> None:
    assert pki.fingerprint(ca.cert_pem) == "sha256:" + ca.certificate.fingerprint(hashes.SHA256()).hex()


def test_the_head_certificate_covers_its_names_and_addresses(ca: pki.KeyPair) -> None:
    server = pki.issue_server(ca, ["head.example", "10.0.0.5", "::1"])
    sans = server.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["head.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "::1"]
    usage = server.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert pki.server_needs_renewal(server.cert_pem, ["other.example"])
    assert not pki.server_needs_renewal(server.cert_pem, ["head.example"])


def test_a_node_certificate_is_bound_to_the_name_the_head_gives_not_the_csrs(ca: pki.KeyPair) -> None:
    key = pki.new_key()
    csr = pki.load_csr(pki.node_csr("i-claim-to-be-gpu-1", key))
    cert = x509.load_pem_x509_certificate(pki.sign_node(ca, csr, "node-7"))
    assert pki.node_name_of(cert) == "node-7"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-7"
    assert pki.key_id(cert) == pki.key_id(csr), "the certificate is on the CSR's key"
    ca.certificate.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert pki.node_name_of(pki.issue_server(ca, ["h"]).certificate) == "", "a server certificate names no node"


def test_csrs_that_are_not_ecdsa_p256_or_not_pem_or_too_large_are_refused() -> None:
    with pytest.raises(pki.CertificateError, match="not a PEM CSR"):
        pki.load_csr(b"hello")
    with pytest.raises(pki.CertificateError, match="too large"):
        pki.load_csr(b"x" * (pki.MAX_CSR_BYTES + 1))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")]))
               .sign(rsa_key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    with pytest.raises(pki.CertificateError, match="ECDSA P-256"):
        pki.load_csr(rsa_csr.public_bytes(serialization.Encoding.PEM))
