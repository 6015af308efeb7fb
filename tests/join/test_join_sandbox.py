"""The join, end to end in the sandbox: real agent processes, real etcd, the k3s stand-in,
moto-backed AWS with lifecycle hooks, the emulated IMDS and Kubernetes API."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from tests.clusters import SandboxCluster

pytestmark = pytest.mark.allow_subprocess



def etcd_members(ip: str) -> list[dict]:
    import requests

    r = requests.post(f"http://{ip}:2379/v3/cluster/member/list", json={}, timeout=5)
    r.raise_for_status()
    return r.json()["members"]


def joined(c: SandboxCluster, iid: str) -> None:
    c.join(iid)


def test_founder_two_control_planes_and_three_workers(cluster: SandboxCluster) -> None:
    c = cluster
    cps = c.group("control-plane", 3)
    first = cps[0]
    joined(c, first)
    state = json.loads(c.instances[first].root.read_text("/var/lib/herd-agent/join.json"))
    assert state["founder"] is True and state["hook_completed"] is True
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: joined(c, i), cps[1:]))
    workers = c.group("node", 3)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda i: joined(c, i), workers))

    # Every instance is a Ready Node under its instance id, and InService.
    nodes = {n["metadata"]["name"]: n for n in c.kube.list("Node")}
    assert set(nodes) == set(cps) | set(workers)
    for iid in cps + workers:
        ready = [x for x in nodes[iid]["status"]["conditions"] if x["type"] == "Ready"][0]
        assert ready["status"] == "True"
        assert c.region.lifecycle_state(iid) == "InService"
        assert nodes[iid]["metadata"]["labels"]["topology.kubernetes.io/zone"].startswith("us-east-1")
    # One etcd cluster of three voters, one member per control plane.
    members = etcd_members(c.region.instance(first).private_ip)
    assert sorted(m["name"] for m in members) == sorted(cps)
    assert not any(m.get("isLearner") for m in members)
    # /etc/hosts on every instance points the endpoint at a control plane.
    cp_ips = {c.region.instance(i).private_ip for i in cps}
    for iid in cps + workers:
        text = c.instances[iid].root.read_text("/etc/hosts")
        line = [ln for ln in text.splitlines() if ln.endswith(f"control-plane.{c.name}.internal")][0]
        assert line.split()[0] in cp_ips
        token = c.instances[iid].root.path("/var/lib/herd-agent/token")
        assert token.stat().st_mode & 0o777 == 0o600
    # Workers made at most four AWS calls each to join.
    for w in workers:
        actions = [call.action for call in c.region.calls(caller=w)]
        assert len(actions) <= 4, actions


def test_rerun_changes_nothing(cluster: SandboxCluster) -> None:
    c = cluster
    (cp,) = c.group("control-plane", 1)
    joined(c, cp)
    (w,) = c.group("node", 1)
    joined(c, w)
    inst = c.instances[w]
    files = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in inst.root_dir.rglob("*")
             if p.is_file() and "proc" not in p.parts and "herd-sandbox" not in p.parts}
    before = len(c.region.calls(caller=w))
    r = c.instances[w].agent("join")
    assert r.returncode == 0, r.stderr
    assert len(c.region.calls(caller=w)) == before  # no AWS call at all: identity is IMDS only
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in files}
    changed = [str(p) for p in files if files[p] != after[p] and p.name != "join.json"]
    assert changed == []


def test_five_control_planes_at_once_found_one_cluster(cluster: SandboxCluster) -> None:
    c = cluster
    cps = c.group("control-plane", 5)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: c.instances[i].agent("join"), cps))
    for iid, r in zip(cps, results, strict=True):
        assert r.returncode == 0, f"{iid}: {r.stderr[-2000:]}"
    founders = [i for i in cps
                if json.loads(c.instances[i].root.read_text("/var/lib/herd-agent/join.json"))["founder"]]
    assert len(founders) == 1
    members = etcd_members(c.region.instance(founders[0]).private_ip)
    assert sorted(m["name"] for m in members) == sorted(cps)
    assert not any(m.get("isLearner") for m in members)
    assert len(c.kube.list("Node")) == 5
