"""External mode over TLS (issue 13): client and peer TLS with client-certificate authentication,
the cluster CA in Secrets Manager (conditional create), per-member certificates, renewal.

Real etcd 3.5 and 3.4 (``.toolchain/bin/etcd``, ``etcd-3.4``); moto's Secrets Manager.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import stat
import time
from pathlib import Path

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from herd_agent.certs import issue_certificate, new_ca
from herd_agent.etcd.client import EtcdClient, TlsFiles
from herd_agent.etcd.errors import EtcdUnreachable
from herd_agent.etcd.pki import SecretsManagerCaStore, ensure_member_certificate, renewal_reason
from herd_agent.etcd.settings import EtcdSettings, Identity
from herd_agent.host.fsroot import HostRoot
from tests.etcd.conftest import lab_settings
from tests.etcd.harness import TEST_ETCD_ENV, Lab, healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess

TOOLCHAIN = Path(__file__).resolve().parents[2] / ".toolchain" / "bin"
ETCD34 = shutil.which("etcd-3.4", path=str(TOOLCHAIN)) or shutil.which("etcd", path="/usr/bin")


@pytest.fixture(params=["3.5", "3.4"])
def any_lab(request, lab):
    if request.param == "3.4":
        if not ETCD34:
            pytest.skip("etcd 3.4 not found: run scripts/setup")
        lab.runner_env["HERD_SANDBOX_ETCD"] = ETCD34
    return request.param, lab


def _cert(inst):
    return x509.load_pem_x509_certificate(inst.root.read_text("/var/lib/herd-agent/etcd-pki/member.crt").encode())


def test_members_demand_client_certificates(any_lab):
    version, lab = any_lab
    a = lab.found()
    b = lab.join()
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="two voters over TLS")
    assert a.client_url.startswith("https://") and a.membership.peer_url.startswith("https://")
    tls = lab.tls()
    assert EtcdClient([a.client_url], tls=tls).version(a.client_url)["etcdserver"].startswith(version + ".")

    env = a.root.read_text("/etc/herd-agent/etcd.env")
    for line in ("ETCD_CLIENT_CERT_AUTH=true", "ETCD_PEER_CLIENT_CERT_AUTH=true",
                 "ETCD_CERT_FILE=/var/lib/herd-agent/etcd-pki/member.crt",
                 "ETCD_PEER_TRUSTED_CA_FILE=/var/lib/herd-agent/etcd-pki/ca.crt"):
        assert line in env.splitlines()
    for inst in (a, b):
        for f in ("ca.crt", "member.crt", "member.key"):
            mode = stat.S_IMODE(inst.root.path(f"/var/lib/herd-agent/etcd-pki/{f}").stat().st_mode)
            assert mode == 0o600, (f, oct(mode))
        san = _cert(inst).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address(inst.ip) in san.get_values_for_type(x509.IPAddress)
        assert inst.name in san.get_values_for_type(x509.DNSName)
        assert not list(inst.root.path("/var/lib/herd-agent/etcd-pki").glob("ca.key"))  # the CA key stays in AWS
    # one CA for the cluster, in Secrets Manager
    secret = json.loads(boto3.client("secretsmanager", region_name="us-east-1")
                        .get_secret_value(SecretId=lab.settings.ca_secret)["SecretString"])
    assert secret["cert"] == a.root.read_text("/var/lib/herd-agent/etcd-pki/ca.crt") \
        == b.root.read_text("/var/lib/herd-agent/etcd-pki/ca.crt")

    no_cert = EtcdClient([a.client_url], tls=TlsFiles(ca=tls.ca), retry_s=0, timeout_s=3)
    with pytest.raises(EtcdUnreachable):
        no_cert.member_list()
    plain = EtcdClient([a.client_url.replace("https://", "http://")], retry_s=0, timeout_s=3)
    with pytest.raises(EtcdUnreachable):
        plain.member_list()
    # a certificate from another CA is refused too
    other_ca, other_key = new_ca("rogue", 3600)
    rogue_dir = lab.base / "rogue"
    rogue_dir.mkdir()
    cert, key = issue_certificate(other_ca, other_key, "rogue", "127.0.0.1", 3600)
    (rogue_dir / "c.crt").write_bytes(cert)
    (rogue_dir / "c.key").write_bytes(key)
    rogue = EtcdClient([a.client_url], tls=TlsFiles(ca=tls.ca, cert=str(rogue_dir / "c.crt"),
                                                    key=str(rogue_dir / "c.key")), retry_s=0, timeout_s=3)
    with pytest.raises(EtcdUnreachable):
        rogue.member_list()


def test_leader_leaves_and_a_member_is_replaced_over_tls(lab):
    a, b, c = lab.three()
    st = lab.status()
    leader = next(i for i in (a, b, c) if {m.id: m.name for m in st.members}[st.leader] == i.name)
    result = leader.membership.leave([i.client_url for i in (a, b, c)])
    assert result.removed and result.leadership_to
    leader.alive = False
    rest = [i for i in (a, b, c) if i is not leader]
    d = lab.join()
    wait_for(lambda: healthy_voters_equal(lab, [*rest, d]), what="replacement joined over TLS")


def test_two_founders_get_one_ca(tmp_path, moto_ec2):
    settings = lab_settings()
    store = SecretsManagerCaStore(settings.ca_secret, client=boto3.client("secretsmanager", region_name="us-east-1"))
    roots = [HostRoot(tmp_path / n) for n in ("x", "y")]

    class Racing:
        """Both founders read "no CA" before either writes: only the conditional create decides."""

        def __init__(self):
            self.reads = 0

        def get(self):
            self.reads += 1
            return None if self.reads <= 2 else store.get()

        def create(self, cert, key):
            return store.create(cert, key)

    racing = Racing()
    for root, ip in zip(roots, ("127.0.0.5", "127.0.0.6"), strict=True):
        assert ensure_member_certificate(root, settings, Identity(f"i-{ip[-1]}", ip), racing, founder=True,
                                         now=time.time())
    cas = {r.read_text("/var/lib/herd-agent/etcd-pki/ca.crt") for r in roots}
    assert len(cas) == 1 and cas == {store.get()[0].decode()}


def test_joiner_without_ca_is_refused_clearly(tmp_path, moto_ec2):
    from herd_agent.etcd.pki import PkiError

    settings = lab_settings()
    store = SecretsManagerCaStore(settings.ca_secret, client=boto3.client("secretsmanager", region_name="us-east-1"))
    with pytest.raises(PkiError, match="does not exist; the founding control plane creates it"):
        ensure_member_certificate(HostRoot(tmp_path), settings, Identity("i-1", "127.0.0.7"), store,
                                  founder=False, now=time.time())
    assert not (tmp_path / "var/lib/herd-agent/etcd-pki/member.key").exists()  # nothing half-written


def test_renewal_reasons():
    ca, ca_key = new_ca("ca", 86400)
    cert, _ = issue_certificate(ca, ca_key, "i-1", "10.0.0.5", 300)
    c = x509.load_pem_x509_certificate(cert)
    start, end = c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp()
    third = (end - start) / 3
    assert renewal_reason(cert, ca, "i-1", "10.0.0.5", end - third - 1) is None
    assert "lifetime left" in renewal_reason(cert, ca, "i-1", "10.0.0.5", end - third + 1)
    assert "do not cover" in renewal_reason(cert, ca, "i-1", "10.0.0.6", start)
    other, _ = new_ca("other", 86400)
    assert "not issued by the cluster CA" in renewal_reason(cert, other, "i-1", "10.0.0.5", start)


@pytest.fixture
def short_lab(tmp_path, toolchain, moto_ec2):
    ec2, subnet = moto_ec2
    lab = Lab(tmp_path, toolchain.bindir, ec2, subnet, lab_settings(cert_lifetime_s=40, extra_env=dict(TEST_ETCD_ENV)))
    try:
        yield lab
    finally:
        lab.cleanup()


def test_certificates_renewed_before_expiry_keep_the_cluster_working(short_lab):
    """40 s certificates: the periodic pass (``Membership.gc``) renews each member's when a third
    is left and restarts it; after every original certificate has expired, the cluster still
    serves verified TLS and a member restarted afterwards rejoins its peers."""
    lab = short_lab
    a = lab.found()
    b = lab.join()
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="two voters")
    old = {i.name: _cert(i) for i in (a, b)}
    assert a.membership.gc([a.client_url], lab.oracle()).removed is None  # nothing due yet: no renewal
    assert _cert(a).serial_number == old[a.name].serial_number
    lab.advance(max(c.not_valid_after_utc.timestamp() for c in old.values()) - lab.now() - 5)  # < 1/3 left
    for inst in (a, b):
        # the renewed certificates get an hour, so they clearly outlive the originals
        inst.membership.settings = dataclasses.replace(lab.settings, cert_lifetime_s=3600)
        pid = inst.systemctl().pid(lab.settings.unit)
        inst.membership.gc([inst.client_url], lab.oracle())
        assert _cert(inst).serial_number != old[inst.name].serial_number
        assert inst.systemctl().pid(lab.settings.unit) != pid  # restarted with the new certificate
        assert ["systemctl", "try-restart", "k3s.service"] in inst.runner.calls  # k3s re-reads its client cert
    expiry = max(c.not_valid_after_utc.timestamp() for c in old.values())
    wait_for(lambda: time.time() > expiry + 1, timeout=60, what="the original certificates expire")
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="two voters after the old certificates expired")
    lab.kill9(b)
    assert b.systemctl().start(lab.settings.unit)[0]
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="b rejoined its peer with the renewed certificate")
    # the expired certificate itself is refused now
    stale = lab.base / "stale.crt"
    stale.write_bytes(old[a.name].public_bytes(serialization.Encoding.PEM))
    files = lab.tls()
    with pytest.raises(EtcdUnreachable):
        EtcdClient([a.client_url], tls=TlsFiles(ca=files.ca, cert=str(stale), key=files.key), retry_s=0,
                   timeout_s=3).member_list()


def test_plain_opt_out_still_works(plain_lab):
    lab = plain_lab
    a = lab.found()
    b = lab.join()
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="two plain voters")
    assert a.client_url.startswith("http://") and "CERT" not in a.root.read_text("/etc/herd-agent/etcd.env")
    assert not a.root.exists("/var/lib/herd-agent/etcd-pki/member.crt")


def test_settings_from_config_default_to_tls(tmp_path):
    from herd_agent.config.loader import load_config

    root = HostRoot(tmp_path)
    root.write("/etc/herd-agent/config.yaml", "etcd:\n  mode: external\n", mode=0o644)
    s = EtcdSettings.from_config(load_config(root), cluster="prod")
    assert s.member_tls and s.scheme == "https" and s.ca_secret == "/herd/prod/etcd-ca"
    assert s.tls.cert == "/var/lib/herd-agent/etcd-pki/member.crt"
    assert s.cert_lifetime_s == 365 * 86400
    assert os.path.basename(s.pki_files().key) == "member.key"


def test_k3s_datastore_uses_the_member_certificate(tmp_path):
    from herd_agent.config.loader import load_config
    from herd_agent.discovery.identity import Identity as HostIdentity
    from herd_agent.k3s import config as k3s_config

    root = HostRoot(tmp_path)
    root.write("/etc/herd-agent/config.yaml", "etcd:\n  mode: external\n", mode=0o644)
    cp = HostIdentity("i-0aaa", "us-east-1", "us-east-1b", "127.0.1.5", "m6i.large", "blue-cp", "blue",
                      "control-plane")
    settings = EtcdSettings.from_config(load_config(root), cluster="blue")
    out = k3s_config.render(load_config(root), cp, founder=False, datastore_endpoint=settings.client_url(cp.private_ip))
    assert out["datastore-endpoint"] == "https://127.0.1.5:2379"
    assert (out["datastore-cafile"], out["datastore-certfile"], out["datastore-keyfile"]) == (
        settings.tls.ca, settings.tls.cert, settings.tls.key)
    plain = k3s_config.render(load_config(root), cp, founder=False, datastore_endpoint="http://127.0.1.5:2379")
    assert "datastore-certfile" not in plain
