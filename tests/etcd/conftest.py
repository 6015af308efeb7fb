from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from herd_agent.etcd.settings import EtcdSettings
from tests.etcd.harness import TEST_ETCD_ENV, Lab, free_port


@pytest.fixture
def moto_ec2() -> Iterator[object]:
    """moto in server mode on 127.0.0.1 (EC2, Secrets Manager), with boto3 pointed at it through
    AWS_ENDPOINT_URL. Per test: a sandbox region (tests/etcd/test_replacement.py) resets moto's
    process-wide state when it starts and stops."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    from herd_agent import aws

    aws.reset_clients()  # cached clients point at an earlier test's endpoint

    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/16")["Subnet"]["SubnetId"]
    try:
        yield ec2, subnet
    finally:
        server.stop()
        aws.reset_clients()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_SECRETS = itertools.count()


def lab_settings(tls: bool = True, **over: object) -> EtcdSettings:
    """Lab settings: TLS with client certificates (the external-mode default) unless ``tls=False``
    (the ``etcd.insecure_plain_http`` opt-out); each lab gets its own CA secret."""
    base = dict(client_port=free_port(), peer_port=free_port(), listen_localhost=False, lock_ttl_s=3,
                lock_wait_s=120, reconfig_retry_s=30, start_timeout_s=30, leave_timeout_s=20,
                embedded_removal_wait_s=1.5, stale_grace_s=300, unstarted_grace_s=600, extra_env=dict(TEST_ETCD_ENV))
    base.update(over)
    if tls:
        base.setdefault("ca_secret", f"/herd/lab{os.getpid()}-{next(_SECRETS)}/etcd-ca")
        return EtcdSettings.external_tls(**base)
    return EtcdSettings(**base)  # type: ignore[arg-type]


def _lab(tmp_path, toolchain, moto_ec2, tls: bool = True, **env: str) -> Iterator[Lab]:
    ec2, subnet = moto_ec2
    lab = Lab(tmp_path, toolchain.bindir, ec2, subnet, lab_settings(tls, extra_env={**TEST_ETCD_ENV, **env}))
    try:
        yield lab
    finally:
        lab.cleanup()


@pytest.fixture
def lab(tmp_path, toolchain, moto_ec2) -> Iterator[Lab]:
    """A lab whose etcd keeps its strict reconfig check: every change also meets etcd's own
    guard, including its fixed 5 s "all voters connected" wait the client's retries ride out."""
    yield from _lab(tmp_path, toolchain, moto_ec2)


@pytest.fixture
def fast_lab(tmp_path, toolchain, moto_ec2) -> Iterator[Lab]:
    """A lab with etcd's strict reconfig check off: the agent's own quorum proofs are the only
    guard (what gc, leave-fallback and CLI tests check), and no change waits etcd's 5 s."""
    yield from _lab(tmp_path, toolchain, moto_ec2, ETCD_STRICT_RECONFIG_CHECK="false")


@pytest.fixture
def plain_lab(tmp_path, toolchain, moto_ec2) -> Iterator[Lab]:
    """A lab with the ``etcd.insecure_plain_http`` opt-out: plain HTTP, no client certificates."""
    yield from _lab(tmp_path, toolchain, moto_ec2, tls=False)
