"""A replacement control plane joins while the dead voter it replaces is still listed (issue 12).

Three real etcd members (TLS) on instances of a sandbox Auto Scaling group; one is killed hard
and its instance sits in ``Terminating:Wait`` (a terminate hook with a long heartbeat timeout),
so EC2 still says ``running`` and the member is inside ``stale_grace_s``. etcd refuses any
learner add with "unhealthy cluster" while that voter is listed; the replacement must clear it
(cloud: going away, member: silent, quorum: proven) during its own wait and join the first time.
"""

from __future__ import annotations

import pytest

from herd_agent.etcd.gc import Ec2InstanceOracle
from herd_agent.etcd.pki import SecretsManagerCaStore
from herd_sandbox.aws.region import Hook
from tests.etcd.conftest import lab_settings
from tests.etcd.harness import Lab, healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess

GROUP = "herd-cp"


@pytest.fixture
def asg_lab(tmp_path, toolchain, make_aws_region):
    region = make_aws_region(time_factor=1.0)  # the terminate hook's 7200 s heartbeat holds Terminating:Wait
    region.create_launch_template(GROUP)
    region.create_group(GROUP, GROUP, desired=3, max_size=4,
                        hooks=[Hook("drain", "terminating", heartbeat_timeout=7200, default_result="CONTINUE")])
    settings = lab_settings(reconfig_retry_s=30, stale_grace_s=300)
    lab = Lab(tmp_path, toolchain.bindir, region.client("ec2"), "", settings,
              oracle_factory=lambda: Ec2InstanceOracle("us-east-1", client=region.client("ec2"),
                                                       autoscaling=region.client("autoscaling")),
              ca_store_factory=lambda: SecretsManagerCaStore(settings.ca_secret,
                                                             client=region.client("secretsmanager")))
    try:
        yield lab, region
    finally:
        lab.cleanup()


def _adopt(lab, region, instance_id):
    return lab.adopt(instance_id, region.instance(instance_id).private_ip)


def _three_voters(lab, region):
    """The group's first three instances as an external etcd cluster: one founds, two join."""
    ids = region.wait_for_instances(GROUP, 3)
    a, b, c = (_adopt(lab, region, i) for i in ids[:3])
    a.membership.found()
    for inst in (b, c):
        inst.membership.join(lab.endpoints(exclude=inst), oracle=lab.oracle())
    return ids, (a, b, c)


def test_replacement_joins_first_time_while_dead_voter_is_terminating(asg_lab):
    lab, region = asg_lab
    ids, (a, b, c) = _three_voters(lab, region)
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="three voters")

    lab.kill9(c)  # dies hard: no leave
    c.alive = False
    region.terminate_instance(c.name, decrement=False)  # the group replaces it
    region.wait_for_state(c.name, "Terminating:Wait")
    assert region.ec2_state(c.name) == "running"  # EC2 alone does not say it is going
    [new_id] = region.wait_for(lambda: [i for i in region.group_instances(GROUP, frozenset({"InService"}))
                                        if i not in ids] or None, 10, "the replacement instance")
    d = _adopt(lab, region, new_id)

    result = d.membership.join(lab.endpoints(exclude=d), oracle=lab.oracle())  # first attempt, no retry

    assert c.name not in {m.name for m in lab.client(exclude=c).member_list()[1]}, "the dead voter is listed"
    assert len(result.removed) == 1 and not result.reused
    wait_for(lambda: healthy_voters_equal(lab, [a, b, d]), what="a, b and the replacement are the voters")
    assert lab.now() == lab.clock[0]  # no grace period was waited out: the clock never moved
    assert region.lifecycle_state(c.name) == "Terminating:Wait"


def test_periodic_gc_keeps_the_grace_for_a_terminating_member(asg_lab):
    """Outside a join the going-away rule keeps ``stale_grace_s``: a watcher's pass waits."""
    lab, region = asg_lab
    ids, (a, b, c) = _three_voters(lab, region)
    lab.kill9(c)
    c.alive = False
    region.terminate_instance(c.name, decrement=True)
    region.wait_for_state(c.name, "Terminating:Wait")
    first = a.membership.gc([a.client_url], lab.oracle())
    assert first.removed is None
    assert [(x.member.name, x.reason, x.ripe) for x in first.candidates] == [(c.name, "going-away", False)]
    assert "Terminating:Wait" in first.candidates[0].evidence
    lab.advance(lab.settings.stale_grace_s + 1)
    second = a.membership.gc([a.client_url], lab.oracle())
    assert second.removed is not None and second.removed.member.name == c.name
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="c removed after its grace")
