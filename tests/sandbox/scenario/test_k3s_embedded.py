"""The k3s stand-in's embedded etcd: found with cluster-init, join as learner then voter, TLS with
k3s' files, and the member removed when its server's Node is deleted (k3s' etcd finalizer)."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from herd_sandbox.aws.region import Hook, Region
from herd_sandbox.instance import SandboxInstance
from herd_sandbox.k3s import ETCD_DATA_DIR, ETCD_FINALIZER, ETCD_TLS_DIR, NODE_NAME_ANNOTATION, EmbeddedEtcd
from herd_sandbox.kube.sandbox import KubeSandbox
from herd_sandbox.verify import EtcdGatewayError

pytestmark = pytest.mark.allow_subprocess

CONFIG = """\
discovery:
  attempts: 40
  backoff_max_s: 1
  health_timeout_s: 1
join:
  ready_timeout_s: 90
etcd:
  mode: embedded
"""


@pytest.fixture
def servers(aws_region: Region, kube_sandbox: KubeSandbox, tmp_path: Path,
            toolchain) -> Iterator[list[SandboxInstance]]:
    aws_region.create_launch_template("emb-lt")
    aws_region.create_group("emb-cp", "emb-lt", desired=2, max_size=4, hooks=[Hook("launch", "launching")],
                            tags={"herd:cluster": "emb", "herd:role": "control-plane"})
    insts = []
    for iid in aws_region.group_instances("emb-cp"):
        inst = SandboxInstance(iid, tmp_path / iid, {**aws_region.env(iid),
                                                     "HERD_SANDBOX_KUBECONFIG": str(kube_sandbox.admin_kubeconfig),
                                                     "HERD_SANDBOX_ETCD": str(toolchain.etcd)}).prepare()
        inst.write_config(CONFIG)
        insts.append(inst)
    try:
        yield insts
    finally:
        for inst in insts:
            inst.stop_units()


def test_a_join_after_a_failed_first_etcd_start_joins_the_cluster(
        servers: list[SandboxInstance], aws_region: Region) -> None:
    """A first start whose etcd died before writing its WAL (seen: the peer URLs failed to validate
    while a control plane left) leaves ``member/snap`` behind. As k3s does (``IsInitialized`` looks
    for ``member/wal``), the next start joins again: it must not boot a one-member cluster of its own."""
    first, second = servers
    assert first.agent("join").returncode == 0
    second.root.path(f"{ETCD_DATA_DIR}/member/snap").mkdir(parents=True)
    r = second.agent("join")
    assert r.returncode == 0, r.stderr[-2000:]
    ids = []
    for inst in servers:
        ip = aws_region.instance(inst.instance_id).private_ip
        client = EmbeddedEtcd(inst.root, inst.instance_id, ip).client()
        try:
            cluster_id, members = client.member_list()
        finally:
            client.close()
        ids.append(cluster_id)
        assert len(members) == 2, members
    assert ids[0] == ids[1]


def test_servers_found_and_join_embedded_etcd_and_a_deleted_node_loses_its_member(
        servers: list[SandboxInstance], aws_region: Region, kube_sandbox: KubeSandbox) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: i.agent("join"), servers))
    for inst, r in zip(servers, results, strict=True):
        assert r.returncode == 0, f"{inst.instance_id}: {r.stderr[-2000:]}"
    ips = {i.instance_id: aws_region.instance(i.instance_id).private_ip for i in servers}
    first, second = servers
    etcd = EmbeddedEtcd(first.root, first.instance_id, ips[first.instance_id])
    client = etcd.client()
    try:
        _, members = client.member_list()
        # k3s' member names: <node>-<8 hex>; both voters; TLS client URLs on the node IPs.
        names = {re.sub(r"-[0-9a-f]{8}$", "", m.name): m for m in members}
        assert set(names) == set(ips) and all(re.fullmatch(r"i-[0-9a-f]+-[0-9a-f]{8}", m.name) for m in members)
        assert not any(m.is_learner for m in members)
        assert {m.client_urls for m in members} == {(f"https://{ip}:2379",) for ip in ips.values()}
        # k3s' file names; the key is private. A client without the cluster's certificate is refused.
        for inst in servers:
            key = inst.root.path(f"{ETCD_TLS_DIR}/server-client.key")
            assert key.stat().st_mode & 0o777 == 0o600
            assert inst.root.exists(f"{ETCD_TLS_DIR}/server-ca.crt")
        with pytest.raises(requests.exceptions.RequestException):
            requests.post(f"https://{ips[first.instance_id]}:2379/v3/cluster/member/list", json={}, timeout=5,
                          verify=str(first.root.path(f"{ETCD_TLS_DIR}/server-ca.crt")))
        # Each server's Node carries the etcd role, its member name and the finalizer.
        node = kube_sandbox.get("Node", second.instance_id)
        assert node["metadata"]["labels"]["node-role.kubernetes.io/etcd"] == "true"
        assert node["metadata"]["finalizers"] == [ETCD_FINALIZER]
        assert node["metadata"]["annotations"][NODE_NAME_ANNOTATION] == names[second.instance_id].name

        # Deleting the Node removes its member, then the finalizer, then the Node.
        kube_sandbox.delete("Node", second.instance_id)
        kube_sandbox.wait_for(lambda: kube_sandbox.find("Node", second.instance_id) is None, timeout=30)

        def only_first() -> bool:
            try:
                return [m.name for m in client.member_list()[1]] == [names[first.instance_id].name]
            except EtcdGatewayError:  # "leader changed" right after the removal: ask again
                return False

        kube_sandbox.wait_for(only_first, timeout=10)

        def logged() -> bool:  # the stand-in's log reaches its file after the Node is released
            log = second.root.read_text("/var/log/herd-sandbox/k3s.service.log") + \
                first.root.read_text("/var/log/herd-sandbox/k3s.service.log")
            return f"Removed etcd member {names[second.instance_id].name}" in log

        kube_sandbox.wait_for(logged, timeout=30)
    finally:
        client.close()
