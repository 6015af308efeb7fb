"""The client over HTTPS with client certificates, as embedded mode talks to k3s' etcd."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from herd_agent.config.loader import load_config
from herd_agent.etcd.client import EtcdClient, TlsFiles
from herd_agent.etcd.errors import EtcdUnreachable
from herd_agent.etcd.settings import K3S_ETCD_TLS, EtcdSettings
from herd_agent.host.fsroot import HostRoot
from herd_sandbox.systemctl import Systemctl
from tests.etcd.harness import free_port

UNIT = "herd-etcd.service"


def _cert(name, key, issuer=None, issuer_key=None, *, ca=False, ip=None, usage=None):
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def tls_etcd(tmp_path, toolchain):
    root = HostRoot(tmp_path / "root")
    ip = "127.0.9.20"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("etcd-server-ca", ca_key, ca=True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # etcd's gateway dials its own gRPC server with the server certificate, so it needs clientAuth too
    srv = _cert("etcd-server", srv_key, ca, ca_key, ip=ip,
                usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cli = _cert("etcd-client", cli_key, ca, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    d = K3S_ETCD_TLS
    root.write(f"{d}/server-ca.crt", _pem(ca), mode=0o644)
    root.write(f"{d}/server.crt", _pem(srv), mode=0o644)
    root.write(f"{d}/server.key", _pem(srv_key), mode=0o600)
    root.write(f"{d}/server-client.crt", _pem(cli), mode=0o644)
    root.write(f"{d}/server-client.key", _pem(cli_key), mode=0o600)
    cport, pport = free_port(), free_port()
    url = f"https://{ip}:{cport}"
    root.write("/etc/herd-agent/etcd.env", "\n".join([
        "ETCD_NAME=k3s", "ETCD_DATA_DIR=/var/lib/etcd", f"ETCD_LISTEN_CLIENT_URLS={url}",
        f"ETCD_ADVERTISE_CLIENT_URLS={url}", f"ETCD_LISTEN_PEER_URLS=http://{ip}:{pport}",
        f"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{ip}:{pport}", f"ETCD_INITIAL_CLUSTER=k3s=http://{ip}:{pport}",
        f"ETCD_CERT_FILE={d}/server.crt", f"ETCD_KEY_FILE={d}/server.key", f"ETCD_TRUSTED_CA_FILE={d}/server-ca.crt",
        "ETCD_CLIENT_CERT_AUTH=true",
    ]) + "\n", mode=0o640)
    ctl = Systemctl(root, {"PATH": f"{toolchain.bindir}:/usr/bin:/bin"})
    ok, msg = ctl.start(UNIT)
    assert ok, msg
    yield root, url
    ctl.stop(UNIT)


@pytest.mark.allow_subprocess
def test_embedded_settings_reach_etcd_with_k3s_client_certificate(tls_etcd):
    root, url = tls_etcd
    root.write("/etc/herd-agent/config.yaml", "etcd:\n  mode: embedded\n", mode=0o644)
    settings = EtcdSettings.from_config(load_config(root))
    assert settings.embedded_client_url == "https://127.0.0.1:2379"
    tls = settings.tls_files(root)
    assert tls.cert == str(root.path(f"{K3S_ETCD_TLS}/server-client.crt")) and tls.verify
    client = EtcdClient([url], tls=tls, retry_s=5)
    _, [member] = client.member_list()
    assert member.name == "k3s" and member.client_urls == (url,)


@pytest.mark.allow_subprocess
def test_no_client_certificate_or_wrong_ca_is_refused(tls_etcd, tmp_path):
    root, url = tls_etcd
    ca = str(root.path(f"{K3S_ETCD_TLS}/server-ca.crt"))
    with pytest.raises(EtcdUnreachable):
        EtcdClient([url], tls=TlsFiles(ca=ca), retry_s=0, timeout_s=2).member_list()
    other_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other-ca.crt").write_bytes(_pem(_cert("other", other_key, ca=True)))
    wrong = TlsFiles(ca=str(tmp_path / "other-ca.crt"), cert=str(root.path(f"{K3S_ETCD_TLS}/server-client.crt")),
                     key=str(root.path(f"{K3S_ETCD_TLS}/server-client.key")))
    with pytest.raises(EtcdUnreachable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        EtcdClient([url], tls=wrong, retry_s=0, timeout_s=2).member_list()
