"""The cluster's certificates: a CA of its own, the head's server certificate, and node certificates signed from
a node's certificate signing request (CSR). ECDSA P-256 and SHA-256 throughout.

Lifetimes (see docs/security.md for rotation):
- the cluster CA: 10 years. Rotating it means a new CA, new head and node certificates and `runyard login` again;
- the head's certificate: 397 days, issued again at the head's start when it has under 30 days left or its names
  changed;
- a node's certificate: 397 days, bound to one node name (its subject CN and a `urn:runyard:node:NAME` SAN).

A client pins the CA, not the head's certificate, so the head's certificate may change under it. The CA's
fingerprint (`fingerprint()`) is what a user compares when `runyard login` first sees a head.
Must not: open network connections (`fetch_ca` is the one exception: it reads a head's certificate chain
without trusting it, for a user or an agent to compare with a fingerprint they were given), or know about gRPC.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runyard import config
from runyard.errors import CertificateError

CA_DAYS = 3650
LEAF_DAYS = 397
RENEW_BEFORE_DAYS = 30
NODE_URN = "urn:runyard:node:"
MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


fingerprint = config.fingerprint


def key_id(public_key_pem_or_cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The sha256 of a certificate's or CSR's public key (SubjectPublicKeyInfo DER): one key, one id."""
    der = public_key_pem_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def create_ca(cluster_id: str) -> KeyPair:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Runyard"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"Runyard cluster CA {cluster_id}"[:64])])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_key_pem(key), _cert_pem(cert))


def _leaf(ca: KeyPair, public_key: ec.EllipticCurvePublicKey, common_name: str, sans: list[x509.GeneralName],
          usage: x509.ObjectIdentifier) -> bytes:
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server(ca: KeyPair, names: list[str]) -> KeyPair:
    """The head's key and certificate, valid for `names` (DNS names and IP addresses)."""
    key = new_key()
    unique = list(dict.fromkeys(n for n in names if n))
    cert = _leaf(ca, key.public_key(), unique[0] if unique else "runyard-head", [_san(n) for n in unique],
                 ExtendedKeyUsageOID.SERVER_AUTH)
    return KeyPair(_key_pem(key), cert)


def server_needs_renewal(cert_pem: bytes, names: list[str]) -> bool:
    """The head's certificate expires within RENEW_BEFORE_DAYS, or does not cover one of `names`."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    if cert.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return True
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    return any(str(_san(n).value) not in have for n in names if n)


def node_csr(name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A CSR whose self-signature holds, with an ECDSA P-256 key; CertificateError otherwise."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CertificateError("the certificate signing request is too large")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CertificateError("the certificate signing request is not a PEM CSR") from None
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("the certificate signing request must carry an ECDSA P-256 key")
    try:
        if not csr.is_signature_valid:
            raise CertificateError("the certificate signing request's signature does not hold")
    except InvalidSignature:
        raise CertificateError("the certificate signing request's signature does not hold") from None
    return csr


def sign_node(ca: KeyPair, csr: x509.CertificateSigningRequest, node_name: str) -> bytes:
    """A client certificate for `node_name` on the CSR's key; the name comes from the head, not from the CSR."""
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return _leaf(ca, public_key, node_name, [x509.UniformResourceIdentifier(NODE_URN + node_name)],
                 ExtendedKeyUsageOID.CLIENT_AUTH)


def node_name_of(cert: x509.Certificate) -> str:
    """The node name a node certificate is bound to, or "" when it is not a node certificate."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(NODE_URN):
            return uri[len(NODE_URN):]
    return ""


def local_names(listen_host: str) -> list[str]:
    """The names and addresses the head may be reached by on this machine: its listen address when it is a
    specific one, the host name and FQDN, localhost, and every address of every interface."""
    names = [listen_host] if listen_host not in ("", "0.0.0.0", "::", "[::]") else []
    names += [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    try:
        import psutil
        for addrs in psutil.net_if_addrs().values():
            names += [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
    except Exception:  # an interface list is a convenience; the names above always work locally
        pass
    return list(dict.fromkeys(n.strip("[]") for n in names if n))
