"""Bad inputs end the join with a clear message and a distinct exit code (real agent processes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Hook, Region
from herd_sandbox.instance import SandboxInstance
from herd_sandbox.k3s import PingServer

pytestmark = pytest.mark.allow_subprocess
_n = itertools.count()




def worker(region: Region, tmp_path: Path, tags: dict[str, str] | None = None, config: str = "") -> SandboxInstance:
    name = f"err{next(_n)}"
    region.create_launch_template(f"{name}-lt")
    region.create_group(name, f"{name}-lt", desired=1, hooks=[Hook("launch", "launching")],
                        tags={"herd:cluster": name, "herd:role": "node"} if tags is None else tags)
    (iid,) = region.group_instances(name)
    inst = SandboxInstance(iid, tmp_path / iid, region.env(iid)).prepare()
    inst.write_config("discovery:\n  attempts: 2\n  backoff_max_s: 0.1\n  health_timeout_s: 5\n" + config)
    return inst


def test_no_control_plane(region: Region, tmp_path: Path) -> None:
    inst = worker(region, tmp_path)
    r = inst.agent("join")
    assert r.returncode == 69, r.stderr
    assert "no healthy control plane for cluster" in r.stderr and "after 2 rounds" in r.stderr
    # A definite failure completes the launch hook with ABANDON: the group replaces the instance.
    assert region.lifecycle_state(inst.instance_id) in ("Terminating", "Terminating:Wait", "Terminating:Proceed",
                                                         "Terminated")


def test_missing_token_names_the_parameter_and_the_action(region: Region, tmp_path: Path) -> None:
    ip = "127.0.77.1"
    ping = PingServer(ip, 6443, tmp_path)
    try:
        inst = worker(region, tmp_path, config=f"  addresses: [{ip}]\n")
        r = inst.agent("join")
    finally:
        ping.close()
    assert r.returncode == 66, r.stderr

    assert "join token SSM parameter '/herd/err" in r.stderr and "ssm:GetParameter" in r.stderr


def test_access_denied_names_the_action(region: Region, tmp_path: Path) -> None:
    inst = worker(region, tmp_path)
    region.deny("ec2", "DescribeInstances", caller=inst.instance_id)
    r = inst.agent("join")
    assert r.returncode == 77, r.stderr
    assert "ec2:DescribeInstances" in r.stderr and "IAM policy" in r.stderr


@pytest.mark.parametrize(
    ("tags", "needle"),
    [
        ({"herd:role": "node"}, "instance tag 'herd:cluster' is missing"),
        ({"herd:cluster": "Bad_Name", "herd:role": "node"}, "is not a valid cluster name"),
        ({"herd:cluster": "ok-name"}, "instance tag 'herd:role' is missing"),
        ({"herd:cluster": "ok-name", "herd:role": "worker"}, "is neither 'control-plane' nor 'node'"),
    ],
)
def test_missing_or_malformed_tags(region: Region, tmp_path: Path, tags: dict[str, str], needle: str) -> None:
    inst = worker(region, tmp_path, tags=tags)
    r = inst.agent("join")
    assert r.returncode == 65, r.stderr
    assert needle in r.stderr


def test_bad_config_is_78_before_anything_else(region: Region, tmp_path: Path) -> None:
    inst = worker(region, tmp_path, config="  atempts: 3\n")
    r = inst.agent("join")
    assert r.returncode == 78
    assert "discovery.atempts: unknown key; did you mean discovery.attempts?" in r.stderr
    assert region.calls(caller=inst.instance_id) == []


def test_configured_launch_hook_name_saves_the_lookup(region: Region, tmp_path: Path) -> None:
    inst = worker(region, tmp_path, config="join:\n  launch_hook_name: launch\n")
    r = inst.agent("join")
    assert r.returncode == 69
    actions = [c.action for c in region.calls(caller=inst.instance_id)]
    assert "DescribeLifecycleHooks" not in actions and actions[-1] == "CompleteLifecycleAction"
    assert [(a.result, a.how) for a in region.finished_actions(inst.instance_id)] == [("ABANDON", "completed")]
