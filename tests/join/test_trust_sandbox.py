"""Trust in the join, end to end in the sandbox (real agent processes, the k3s stand-in):
workers hold only the agent token; a joiner with the secure token refuses a rogue control plane;
a failed founder's claim is taken over by exactly one of five racing control planes."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Hook, Region
from herd_sandbox.k3s import PingServer
from tests.clusters import SandboxCluster

pytestmark = pytest.mark.allow_subprocess



def ssm_value(region: Region, name: str) -> str:
    return region.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def everything_under(path: Path) -> bytes:
    out = b""
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out += p.read_bytes()
    return out


def test_a_worker_never_holds_the_server_token(cluster: SandboxCluster) -> None:
    c = cluster
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    (w,) = c.group("node", 1)
    r = c.instances[w].agent("--log-level", "DEBUG", "join")
    assert r.returncode == 0, r.stderr[-3000:]
    server = ssm_value(c.region, f"/herd/{c.name}/token")
    agent = ssm_value(c.region, f"/herd/{c.name}/k3s-agent-token")
    # The founder published the secure tokens k3s wrote; they are two different tokens.
    assert server.startswith("K10") and "::server:" in server
    assert agent.startswith("K10") and "::node:" in agent
    server_password = server.split("::server:", 1)[1]
    short_server = c.instances[cp].root.read_text("/var/lib/herd-agent/token").strip()
    assert short_server == server_password  # the founder started k3s with the short form
    inst = c.instances[w]
    # The worker holds the agent token (0600) and the CA it pinned.
    assert inst.root.read_text("/var/lib/herd-agent/token").strip() == agent
    assert inst.root.path("/var/lib/herd-agent/token").stat().st_mode & 0o777 == 0o600
    assert not inst.root.exists("/var/lib/herd-agent/agent-token")
    # Nowhere on the worker: not in any file under its root or workdir (logs included), not in the
    # output of its agent, not in the environment its processes get.
    for needle in (server_password, server, short_server):
        assert needle.encode() not in everything_under(inst.workdir)
        assert needle not in r.stdout + r.stderr
        assert needle not in json.dumps(inst.env())
    # Its only token reads were of the agent token parameter: GetParameter once per join step.
    ssm_reads = [x for x in c.region.calls(caller=w) if x.service == "ssm"]
    assert ssm_reads and all(x.action == "GetParameter" for x in ssm_reads)


def test_a_joiner_with_the_secure_token_refuses_a_rogue_control_plane(cluster: SandboxCluster,
                                                                      tmp_path: Path) -> None:
    c = cluster
    (cp,) = c.group("control-plane", 1)
    c.join(cp)
    # Someone who can tag instances launches one with the cluster's tags, answering /ping with
    # a CA of its own.
    rogue_group = f"{c.name}-rogue"
    c.region.create_group(rogue_group, f"{c.name}-lt", desired=1,
                          tags={"herd:cluster": c.name, "herd:role": "control-plane"})
    (rogue,) = c.region.group_instances(rogue_group)
    rogue_ip = c.region.instance(rogue).private_ip
    (tmp_path / "rogue").mkdir()
    ping = PingServer(rogue_ip, 6443, tmp_path / "rogue")
    try:
        # With the real control plane up, the worker joins through it, whichever it probes first.
        (w1,) = c.group("node", 1)
        c.join(w1)
        cp_ip = c.region.instance(cp).private_ip
        assert f"{cp_ip}\tcontrol-plane.{c.name}.internal" in c.instances[w1].root.read_text("/etc/hosts")
        # With only the rogue answering, a joiner refuses it: exit 82, a clear error, no token written.
        c.instances[cp].stop_units()
        c.region.create_group(f"{c.name}-late", f"{c.name}-lt", desired=1, hooks=[Hook("launch", "launching")],
                              tags={"herd:cluster": c.name, "herd:role": "node"})
        (w2,) = c.region.group_instances(f"{c.name}-late")
        from herd_sandbox.instance import SandboxInstance

        inst = SandboxInstance(w2, tmp_path / w2, {**c.region.env(w2),
                                                   "HERD_SANDBOX_KUBECONFIG": str(c.kube.admin_kubeconfig)}).prepare()
        inst.write_config(c.instances[w1].root.read_text("/etc/herd-agent/config.yaml")
                          .replace("attempts: 40", "attempts: 3")
                          .replace("health_timeout_s: 1\n", "health_timeout_s: 5\n"))  # a slow rogue still answers
        r = inst.agent("join")
    finally:
        ping.close()
    assert r.returncode == 82, r.stderr[-3000:]
    assert "whose CA does not match the join token" in r.stderr and rogue_ip in r.stderr
    assert not inst.root.exists("/var/lib/herd-agent/token")
    assert not inst.root.exists("/etc/rancher/k3s/config.yaml.d/50-herd-agent.yaml")


def test_a_failed_founder_is_taken_over_by_exactly_one_of_five(cluster: SandboxCluster) -> None:
    c = cluster
    # The first founder wins the claim, then fails (a config error found after the claim): it
    # stops k3s, releases its claim and ABANDONs its launch.
    (first,) = c.group("control-plane", 1)
    inst = c.instances[first]
    inst.write_config(inst.root.read_text("/etc/herd-agent/config.yaml") + "k3s:\n  extra:\n    disabel: [x]\n")
    r = inst.agent("join")
    assert r.returncode == 78, r.stderr[-2000:]
    claim = json.loads(ssm_value(c.region, f"/herd/{c.name}/founder/1"))
    assert claim["instance_id"] == first and claim["released"] is True
    # Five control planes race after it: exactly one founds (epoch 2), all five join its cluster.
    c.region.create_group(f"{c.name}-cp2", f"{c.name}-lt", desired=5, max_size=10,
                          hooks=[Hook("launch", "launching", heartbeat_timeout=7200, default_result="ABANDON")],
                          tags={"herd:cluster": c.name, "herd:role": "control-plane"})
    cps = c.region.group_instances(f"{c.name}-cp2")
    from herd_sandbox.instance import SandboxInstance

    for iid in cps:
        c.instances[iid] = SandboxInstance(iid, c.workdir / iid, {
            **c.region.env(iid), "HERD_SANDBOX_KUBECONFIG": str(c.kube.admin_kubeconfig),
            "HERD_SANDBOX_ETCD": str(c.toolchain.etcd)}).prepare()
        c.instances[iid].write_config(c.config)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: c.instances[i].agent("join"), cps))
    for iid, res in zip(cps, results, strict=True):
        assert res.returncode == 0, f"{iid}: {res.stderr[-2000:]}"
    states = {i: json.loads(c.instances[i].root.read_text("/var/lib/herd-agent/join.json")) for i in cps}
    founders = [i for i in cps if states[i]["founder"]]
    assert len(founders) == 1 and states[founders[0]]["founder_epoch"] == 2
    epoch2 = json.loads(ssm_value(c.region, f"/herd/{c.name}/founder/2"))
    assert epoch2["instance_id"] == founders[0]
    names = c.region.client("ssm").get_parameters_by_path(Path=f"/herd/{c.name}/founder")["Parameters"]
    assert sorted(p["Name"].rsplit("/", 1)[1] for p in names) == ["1", "2"]  # no third epoch
    nodes = {n["metadata"]["name"] for n in c.kube.list("Node")}
    assert set(cps) <= nodes and first not in nodes
