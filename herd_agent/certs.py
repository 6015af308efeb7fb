"""Certificates made by the agent (cryptography): a private CA and certificates it signs.

Users: the external etcd cluster's PKI (:mod:`herd_agent.etcd.pki`: the cluster CA, one
certificate per member) and the leader's fencing proxy (:mod:`herd_agent.leader.proxy`: a CA made
at start for helm to trust, its key only in memory). EC P-256 keys, SHA-256 signatures.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(common_name: str, lifetime_s: float) -> tuple[bytes, bytes]:
    """A new self-signed CA: ``(cert PEM, key PEM)`` (EC P-256, valid from a minute ago)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(seconds=lifetime_s))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue_certificate(ca_cert_pem: bytes, ca_key_pem: bytes, name: str, ip: str,
                      lifetime_s: float) -> tuple[bytes, bytes]:
    """A certificate for ``name`` at ``ip`` signed by the CA: ``(cert PEM, key PEM)``.

    SANs: ``ip`` and ``127.0.0.1``, DNS ``name`` and ``localhost``; extended key usage serverAuth
    and clientAuth; valid from a little before now (clock skew) for ``lifetime_s`` seconds, never
    past the CA's own end. Raises ``ValueError`` for a bad ``ip`` or PEM.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    ips = {ipaddress.ip_address(ip), ipaddress.ip_address("127.0.0.1")}
    sans: list[x509.GeneralName] = [x509.IPAddress(a) for a in sorted(ips, key=str)]
    sans += [x509.DNSName(n) for n in dict.fromkeys((name, "localhost"))]
    now = _now()
    not_after = min(now + datetime.timedelta(seconds=lifetime_s), ca_cert.not_valid_after_utc)
    backdate = datetime.timedelta(seconds=min(60.0, lifetime_s / 10))  # clock skew between members
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)
