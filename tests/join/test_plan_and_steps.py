"""`herd-agent plan join` changes nothing; single steps (`hosts sync`) run on their own."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Hook, Region
from herd_sandbox.instance import SandboxInstance
from herd_sandbox.k3s import PingServer

pytestmark = pytest.mark.allow_subprocess
_n = itertools.count()




@pytest.fixture
def setup(region: Region, tmp_path: Path):
    name = f"plan{next(_n)}"
    ip = f"127.0.88.{next(_n) + 1}"
    ping = PingServer(ip, 6443, tmp_path)
    region.create_launch_template(f"{name}-lt")
    region.create_group(name, f"{name}-lt", desired=1, hooks=[Hook("launch", "launching")],
                        tags={"herd:cluster": name, "herd:role": "node"})
    (iid,) = region.group_instances(name)
    # A worker reads only the agent token.
    region.client("ssm").put_parameter(Name=f"/herd/{name}/k3s-agent-token", Value="plan-test-token-value-123",
                                       Type="SecureString")
    inst = SandboxInstance(iid, tmp_path / iid, region.env(iid)).prepare()
    inst.write_config(f"discovery:\n  addresses: [{ip}]\n")
    yield name, ip, inst
    ping.close()


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_plan_join_prints_changes_and_changes_nothing(region: Region, setup) -> None:
    name, ip, inst = setup
    before = snapshot(inst.root_dir)
    r = inst.agent("plan", "join")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"+{ip}\tcontrol-plane.{name}.internal" in out  # the hosts block diff
    assert "/etc/rancher/k3s/config.yaml.d/50-herd-agent.yaml (planned, mode 600)" in out
    assert "+server: https://control-plane." in out
    assert "/var/lib/herd-agent/token (planned, mode 600)" in out and "+***" in out
    assert "plan-test-token-value-123" not in out + r.stderr
    assert "  modprobe br_netfilter" in out and "  systemctl enable k3s-agent.service" in out
    assert "autoscaling:CompleteLifecycleAction launch CONTINUE" in out
    assert snapshot(inst.root_dir) == before  # nothing written
    assert region.lifecycle_state(inst.instance_id) == "Pending:Wait"  # hook untouched
    mutating = [c.action for c in region.calls(caller=inst.instance_id)
                if not c.action.startswith(("Describe", "Get"))]
    assert mutating == []


def test_hosts_sync_alone(setup) -> None:
    name, ip, inst = setup
    r = inst.agent("hosts", "sync")
    assert r.returncode == 0, r.stderr
    assert f"control-plane.{name}.internal -> {ip} (written)" in r.stdout
    assert f"{ip}\tcontrol-plane.{name}.internal" in inst.root.read_text("/etc/hosts")
    r = inst.agent("hosts", "sync")
    assert "(unchanged)" in r.stdout


def test_plan_join_of_a_founding_control_plane(region: Region, tmp_path: Path) -> None:
    name = f"plancp{next(_n)}"
    region.create_launch_template(f"{name}-lt")
    region.create_group(name, f"{name}-lt", desired=1, hooks=[Hook("launch", "launching")],
                        tags={"herd:cluster": name, "herd:role": "control-plane"})
    (iid,) = region.group_instances(name)
    inst = SandboxInstance(iid, tmp_path / iid, region.env(iid)).prepare()
    inst.write_config("etcd:\n  mode: embedded\n")
    before = snapshot(inst.root_dir)
    r = inst.agent("plan", "join")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # The founder decision, the two tokens and the fenced publication are listed, not made.
    assert f"ssm:PutParameter /herd/{name}/founder/<next epoch> (Overwrite=False)" in out
    assert f"/herd/{name}/token (create the server token unless it exists)" in out
    assert f"/herd/{name}/k3s-agent-token (create the agent token unless it exists)" in out
    assert "+cluster-init: true" in out and "+agent-token-file: /var/lib/herd-agent/agent-token" in out
    assert "/var/lib/herd-agent/agent-token (planned, mode 600)" in out
    assert f"publish /var/lib/rancher/k3s/server/token to /herd/{name}/token" in out
    assert "  systemctl enable k3s.service" in out
    assert snapshot(inst.root_dir) == before
    mutating = [c.action for c in region.calls(caller=iid) if not c.action.startswith(("Describe", "Get"))]
    assert mutating == []
