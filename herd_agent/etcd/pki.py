"""The external etcd cluster's PKI: one cluster CA, one certificate per member (cryptography).

Trust model (etcd "Transport security model"): every member serves clients and peers over TLS
and demands a client certificate signed by the cluster CA on both (``--client-cert-auth``,
``--peer-client-cert-auth``), so only holders of a member certificate — control planes — can
read or write the datastore or join raft.

- **The CA** (EC P-256, ``ca_lifetime_s``) is made by the founder and stored as one Secrets
  Manager secret (``etcd.ca_secret``: JSON ``{"cert": PEM, "key": PEM}``) with ``CreateSecret``,
  which fails with ``ResourceExistsException`` when the secret exists: of two founders only one
  writes, the other reads the winner's CA. Only the control-plane role may read the secret
  (IAM); the CA key is never written to disk, only its certificate (``ca.crt``).
- **A member certificate** (EC P-256, ``cert_lifetime_s``): subject CN = the member name; SANs =
  the member's IP, ``127.0.0.1`` (the local listener k3s may use), DNS the member name and
  ``localhost``; extended key usage serverAuth **and** clientAuth (etcd's gateway dials its own
  gRPC server with it, peers present it as client certificate, and it is the agent's and k3s'
  client certificate). Files ``member.crt``/``member.key`` and ``ca.crt`` under ``pki_dir``, 0600.
- **Renewal**: a certificate with less than a third of its lifetime left (or one that no longer
  names our IP/name, or another CA's) is reissued by the next join (every boot) or the watcher's
  periodic etcd pass, which then restarts the member under the membership lock.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Protocol

from herd_agent.certs import issue_certificate, new_ca
from herd_agent.errors import ExitCode, HerdError
from herd_agent.etcd.settings import EtcdSettings, Identity
from herd_agent.host.fsroot import HostRoot

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 64 * 1024
RENEW_FRACTION = 1 / 3


class PkiError(HerdError):
    """The cluster CA is missing, unreadable or could not be stored."""

    exit_code = ExitCode.UNAVAILABLE


class CaStore(Protocol):
    """Where the cluster CA lives."""

    def get(self) -> tuple[bytes, bytes] | None:
        """``(cert PEM, key PEM)``, or None when no CA exists yet."""
        ...

    def create(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Store a new CA only if none exists; False when one already did (nothing written)."""
        ...


def _parse_ca(text: Any, where: str) -> tuple[bytes, bytes]:
    if not isinstance(text, str) or len(text) > MAX_SECRET_BYTES:
        raise PkiError(f"{where}: not a string of at most {MAX_SECRET_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PkiError(f"{where}: not JSON ({exc}); expected {{\"cert\": PEM, \"key\": PEM}}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cert"), str) or not isinstance(data.get("key"), str):
        raise PkiError(f"{where}: expected {{\"cert\": PEM, \"key\": PEM}}")
    return data["cert"].encode(), data["key"].encode()


class SecretsManagerCaStore:
    """:class:`CaStore` in one Secrets Manager secret (``CreateSecret`` is the conditional create).

    Args:
        secret_id: the secret's name (``etcd.ca_secret``).
        region: AWS region for a lazily built client.
        client: a ready boto3 ``secretsmanager`` client (tests: Stubber or moto).
        kms_key_id: KMS key a new CA secret is encrypted with (``kms.key_id``); None: the
            AWS-managed ``aws/secretsmanager`` key.
    """

    def __init__(self, secret_id: str, region: str | None = None, client: Any = None,
                 kms_key_id: str | None = None) -> None:
        self.secret_id = secret_id
        self.region = region
        self._client = client
        self.kms_key_id = kms_key_id

    def _sm(self) -> Any:
        if self._client is None:
            from herd_agent import aws

            self._client = aws.client("secretsmanager", self.region)
        return self._client

    def get(self) -> tuple[bytes, bytes] | None:
        """See :meth:`CaStore.get`. Raises PkiError when the secret cannot be read."""
        try:
            resp = self._sm().get_secret_value(SecretId=self.secret_id)
        except Exception as exc:  # noqa: BLE001 - botocore's ClientError carries the code
            if _code(exc) == "ResourceNotFoundException":
                return None
            raise PkiError(f"cannot read the etcd CA secret {self.secret_id}: {exc}") from exc
        return _parse_ca(resp.get("SecretString"), f"secret {self.secret_id}")

    def create(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """See :meth:`CaStore.create`."""
        body = json.dumps({"cert": cert_pem.decode(), "key": key_pem.decode()})
        try:
            self._sm().create_secret(Name=self.secret_id, SecretString=body,
                                     Description="herd-agent etcd cluster CA (control planes only)",
                                     **({"KmsKeyId": self.kms_key_id} if self.kms_key_id else {}))
        except Exception as exc:  # noqa: BLE001
            if _code(exc) == "ResourceExistsException":
                return False
            raise PkiError(f"cannot create the etcd CA secret {self.secret_id}: {exc}") from exc
        return True


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code", ""))
    return ""


def renewal_reason(cert_pem: bytes, ca_cert_pem: bytes, name: str, ip: str, now: float) -> str | None:
    """Why the member certificate must be reissued, or None when it is fine.

    Reasons: unreadable; not signed by this CA; its SANs miss our IP or name; less than
    :data:`RENEW_FRACTION` of its lifetime left at ``now`` (epoch seconds).
    """
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as exc:
        return f"unreadable certificate ({exc})"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as exc:  # noqa: BLE001 - InvalidSignature and friends
        return f"not issued by the cluster CA ({type(exc).__name__})"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    if ipaddress.ip_address(ip) not in san.get_values_for_type(x509.IPAddress) \
            or name not in san.get_values_for_type(x509.DNSName):
        return f"its names do not cover {name} / {ip}"
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    left = end - now
    if left < (end - start) * RENEW_FRACTION:
        return f"{max(left, 0):.0f}s of its {end - start:.0f}s lifetime left (renewed under a third)"
    return None


def _key_mismatch(cert_pem: bytes, key_pem: bytes) -> str | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert_pub = x509.load_pem_x509_certificate(cert_pem).public_key()
        key_pub = serialization.load_pem_private_key(key_pem, password=None).public_key()
    except (ValueError, TypeError) as exc:
        return f"unreadable key ({exc})"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert_pub.public_bytes(*raw) == key_pub.public_bytes(*raw):
        return None
    return "the key does not match the certificate"


def ensure_member_certificate(root: HostRoot, settings: EtcdSettings, identity: Identity, store: CaStore | None,
                              *, founder: bool, now: float) -> bool:
    """Make ``ca.crt``, ``member.crt`` and ``member.key`` under ``pki_dir`` present and current.

    No cloud call when the files are there and :func:`renewal_reason` finds nothing. Otherwise the
    CA comes from ``store`` (the founder creates it when absent: a conditional create, so a second
    founder reads the first one's CA), and a new key and certificate are written (0600, atomic).

    Returns:
        True when a certificate was issued.

    Raises:
        PkiError: no store, no CA (and not the founder), or the store failed.
    """
    files = settings.pki_files()
    assert files.ca and files.cert and files.key
    ca_local = root.read_text(files.ca, default="").encode()
    cert_local = root.read_text(files.cert, default="").encode()
    key_local = root.read_text(files.key, default="").encode() if root.exists(files.key) else b""
    if ca_local and cert_local and key_local:
        why = renewal_reason(cert_local, ca_local, identity.name, identity.ip, now) or _key_mismatch(cert_local,
                                                                                                    key_local)
        if why is None:
            return False
    else:
        why = "no member certificate yet"
    if store is None:
        raise PkiError("etcd TLS is on but no CA store was given (etcd.ca_secret); cannot issue the member "
                       "certificate")
    pair = store.get()
    if pair is None and founder:
        cert, key = new_ca(f"herd-etcd-ca {settings.cluster_token}", settings.ca_lifetime_s)
        if store.create(cert, key):
            log.info("created the etcd cluster CA in %s", getattr(store, "secret_id", "the CA store"))
            pair = (cert, key)
        else:
            pair = store.get()  # another founder won the conditional create
    if pair is None:
        raise PkiError(f"the etcd cluster CA ({getattr(store, 'secret_id', 'CA store')}) does not exist; the "
                       "founding control plane creates it. Is this cluster's founder running external etcd with TLS?")
    ca_cert, ca_key = pair
    member_cert, member_key = issue_certificate(ca_cert, ca_key, identity.name, identity.ip, settings.cert_lifetime_s)
    root.write(files.ca, ca_cert, mode=0o600)
    root.write(files.key, member_key, mode=0o600)
    root.write(files.cert, member_cert, mode=0o600)
    log.info("issued this etcd member's certificate (%s)", why)
    return True
