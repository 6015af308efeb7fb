"""Lifecycle-hook state machine, driven with boto3 as the agent drives it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError

from herd_sandbox.aws.lifecycle import PROCEED_DELAY_S, ManualClock
from herd_sandbox.aws.region import Hook, Region

LAUNCH = Hook("launch", "launching", heartbeat_timeout=3600, default_result="ABANDON")
TERMINATE = Hook("terminate", "terminating", heartbeat_timeout=3600, default_result="CONTINUE")


def asg_state(region: Region, instance_id: str) -> str | None:
    resp = region.client("autoscaling").describe_auto_scaling_instances(InstanceIds=[instance_id])
    found = resp["AutoScalingInstances"]
    return found[0]["LifecycleState"] if found else None


def group_states(region: Region, group: str) -> dict[str, str]:
    resp = region.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    return {i["InstanceId"]: i["LifecycleState"] for i in resp["AutoScalingGroups"][0]["Instances"]}


def test_launch_waits_in_pending_wait_until_continue(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(LAUNCH,))
    assert asg_state(aws_region, iid) == "Pending:Wait"
    assert group_states(aws_region, "workers") == {iid: "Pending:Wait"}
    assert aws_region.ec2_state(iid) == "running"

    asg = aws_region.client("autoscaling", instance_id=iid)
    asg.complete_lifecycle_action(
        AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid, LifecycleActionResult="CONTINUE"
    )
    assert asg_state(aws_region, iid) == "InService"
    assert group_states(aws_region, "workers") == {iid: "InService"}


def test_no_hooks_means_in_service_at_once(aws_region: Region, group: Callable[..., list[str]]) -> None:
    ids = group("plain", 2)
    assert [asg_state(aws_region, i) for i in ids] == ["InService", "InService"]


def test_complete_by_token(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(LAUNCH,))
    (action,) = aws_region.lifecycle_actions(iid)
    aws_region.client("autoscaling").complete_lifecycle_action(
        AutoScalingGroupName="workers",
        LifecycleHookName="launch",
        LifecycleActionToken=action.token,
        LifecycleActionResult="CONTINUE",
    )
    assert asg_state(aws_region, iid) == "InService"


def test_completing_twice_is_a_validation_error(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(LAUNCH,))
    asg = aws_region.client("autoscaling")
    args = dict(AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid)
    asg.complete_lifecycle_action(LifecycleActionResult="CONTINUE", **args)
    with pytest.raises(ClientError) as err:
        asg.complete_lifecycle_action(LifecycleActionResult="CONTINUE", **args)
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["Error"]["Message"] == f"No active Lifecycle Action found with instance ID {iid}"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as err:
        asg.record_lifecycle_action_heartbeat(**args)
    assert err.value.response["Error"]["Code"] == "ValidationError"


def test_wrong_instance_hook_or_state_is_rejected(aws_region: Region, group: Callable[..., list[str]]) -> None:
    a, b = group("workers", 2, hooks=(LAUNCH, TERMINATE))
    asg = aws_region.client("autoscaling")
    asg.complete_lifecycle_action(
        AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=a, LifecycleActionResult="CONTINUE"
    )
    cases = [
        ("workers", "launch", a),  # already in service: no launch action left
        ("workers", "terminate", b),  # wrong state: b waits on launch, not termination
        ("other", "launch", b),  # wrong group
        ("workers", "launch", "i-0123456789abcdef0"),  # unknown instance
    ]
    for group_name, hook, iid in cases:
        with pytest.raises(ClientError) as err:
            asg.complete_lifecycle_action(
                AutoScalingGroupName=group_name,
                LifecycleHookName=hook,
                InstanceId=iid,
                LifecycleActionResult="CONTINUE",
            )
        assert err.value.response["Error"]["Message"] == f"No active Lifecycle Action found with instance ID {iid}"
    assert asg_state(aws_region, b) == "Pending:Wait"


def test_invalid_result_is_rejected(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(LAUNCH,))
    with pytest.raises(ClientError) as err:
        aws_region.client("autoscaling").complete_lifecycle_action(
            AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid, LifecycleActionResult="MAYBE"
        )
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert asg_state(aws_region, iid) == "Pending:Wait"


def test_abandon_on_launch_terminates_and_replaces(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(LAUNCH,))
    aws_region.client("autoscaling", instance_id=iid).complete_lifecycle_action(
        AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid, LifecycleActionResult="ABANDON"
    )
    assert aws_region.lifecycle_state(iid) == "Terminated"
    assert aws_region.ec2_state(iid) == "terminated"
    assert asg_state(aws_region, iid) is None
    (replacement,) = aws_region.group_instances("workers")
    assert replacement != iid
    assert asg_state(aws_region, replacement) == "Pending:Wait"


def region_group(
    make_aws_region: Callable[..., Region],
    hook: Hook,
    desired: int = 1,
    time_factor: float = 1.0,
    clock: ManualClock | None = None,
) -> tuple[Region, list[str]]:
    """A region of its own (its clock factor, a ManualClock when given) with one group "workers"."""
    region = make_aws_region(time_factor=time_factor, clock=clock)
    region.create_launch_template("workers-lt")
    region.create_group("workers", "workers-lt", desired=desired, hooks=[hook])
    return region, region.group_instances("workers")


def one_instance_group(
    make_aws_region: Callable[..., Region], hook: Hook, time_factor: float = 1.0, clock: ManualClock | None = None
) -> tuple[Region, str]:
    region, (iid,) = region_group(make_aws_region, hook, time_factor=time_factor, clock=clock)
    return region, iid


def test_scale_in_waits_in_terminating_wait(make_aws_region: Callable[..., Region]) -> None:
    # A step-controlled clock: the Terminating:Proceed delay (PROCEED_DELAY_S, scaled) passes
    # only when the test advances it, however slow the machine is between two calls.
    clock = ManualClock()
    region, (a, b) = region_group(make_aws_region, TERMINATE, desired=2, time_factor=0.01, clock=clock)
    region.scale("workers", 1)
    states = group_states(region, "workers")
    (leaving,) = [i for i, s in states.items() if s == "Terminating:Wait"]
    staying = b if leaving == a else a
    assert states[staying] == "InService"
    assert region.ec2_state(leaving) == "running"

    asg = region.client("autoscaling", instance_id=leaving)
    asg.complete_lifecycle_action(
        AutoScalingGroupName="workers",
        LifecycleHookName="terminate",
        InstanceId=leaving,
        LifecycleActionResult="CONTINUE",
    )
    # The transition takes time, as on AWS: the instance keeps running in Terminating:Proceed.
    assert region.lifecycle_state(leaving) == "Terminating:Proceed"
    assert region.ec2_state(leaving) == "running"
    clock.advance(region.scaled(PROCEED_DELAY_S) - 0.01)
    region.run_timers()
    assert region.lifecycle_state(leaving) == "Terminating:Proceed"
    clock.advance(0.02)
    region.run_timers()
    assert region.lifecycle_state(leaving) == "Terminated"
    assert region.ec2_state(leaving) == "terminated"
    assert group_states(region, "workers") == {staying: "InService"}


def test_terminate_instance_in_group_with_replacement(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(TERMINATE,))
    resp = aws_region.client("autoscaling").terminate_instance_in_auto_scaling_group(
        InstanceId=iid, ShouldDecrementDesiredCapacity=False
    )
    assert resp["Activity"]["AutoScalingGroupName"] == "workers"
    states = group_states(aws_region, "workers")
    assert states.pop(iid) == "Terminating:Wait"
    assert list(states.values()) == ["InService"]  # the replacement


def test_terminate_below_min_size_with_decrement_is_refused(
    aws_region: Region, group: Callable[..., list[str]]
) -> None:
    (iid,) = group("workers", 1, hooks=(TERMINATE,), min_size=1)
    with pytest.raises(ClientError) as err:
        aws_region.client("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=iid, ShouldDecrementDesiredCapacity=True
        )
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert asg_state(aws_region, iid) == "InService"


def test_unhealthy_instance_goes_through_termination_hook(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(TERMINATE,))
    aws_region.client("autoscaling").set_instance_health(InstanceId=iid, HealthStatus="Unhealthy")
    assert asg_state(aws_region, iid) == "Terminating:Wait"
    assert (
        aws_region.client("autoscaling").describe_auto_scaling_instances(InstanceIds=[iid])["AutoScalingInstances"][0][
            "HealthStatus"
        ]
        == "Unhealthy"
    )
    aws_region.client("autoscaling").complete_lifecycle_action(
        AutoScalingGroupName="workers", LifecycleHookName="terminate", InstanceId=iid, LifecycleActionResult="ABANDON"
    )
    aws_region.wait_for_state(iid, "Terminated")  # ABANDON on termination still terminates
    assert aws_region.ec2_state(iid) == "terminated"


def test_all_launch_hooks_must_complete(aws_region: Region, group: Callable[..., list[str]]) -> None:
    second = Hook("launch-2", "launching", 3600, "ABANDON")
    (iid,) = group("workers", 1, hooks=(LAUNCH, second))
    asg = aws_region.client("autoscaling")
    for hook in ("launch", "launch-2"):
        assert asg_state(aws_region, iid) == "Pending:Wait"
        asg.complete_lifecycle_action(
            AutoScalingGroupName="workers", LifecycleHookName=hook, InstanceId=iid, LifecycleActionResult="CONTINUE"
        )
    assert asg_state(aws_region, iid) == "InService"


def test_describe_lifecycle_hooks_and_global_timeout(aws_region: Region, group: Callable[..., list[str]]) -> None:
    group("workers", 0, hooks=(Hook("short", "launching", 30, "CONTINUE"), Hook("long", "terminating", 7200)))
    hooks = aws_region.client("autoscaling").describe_lifecycle_hooks(AutoScalingGroupName="workers")
    by_name = {h["LifecycleHookName"]: h for h in hooks["LifecycleHooks"]}
    assert by_name["short"]["HeartbeatTimeout"] == 30
    assert by_name["short"]["GlobalTimeout"] == 3000  # 100 × heartbeat
    assert by_name["short"]["DefaultResult"] == "CONTINUE"
    assert by_name["long"]["GlobalTimeout"] == 172800  # capped at 48 h
    assert by_name["long"]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"


@pytest.mark.parametrize("timeout", [29, 7201])
def test_put_lifecycle_hook_validates_heartbeat(
    aws_region: Region, group: Callable[..., list[str]], timeout: int
) -> None:
    group("workers", 0)
    with pytest.raises(ClientError) as err:
        aws_region.client("autoscaling").put_lifecycle_hook(
            AutoScalingGroupName="workers",
            LifecycleHookName="bad",
            LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
            HeartbeatTimeout=timeout,
        )
    assert err.value.response["Error"]["Code"] == "ValidationError"


def test_hook_added_later_applies_to_later_launches(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (first,) = group("workers", 1)
    aws_region.put_hook("workers", LAUNCH)
    aws_region.scale("workers", 2)
    (second,) = [i for i in aws_region.group_instances("workers") if i != first]
    assert asg_state(aws_region, first) == "InService"
    assert asg_state(aws_region, second) == "Pending:Wait"


# -- timeouts ------------------------------------------------------------------------------------




def test_heartbeat_restarts_the_heartbeat_timer(make_aws_region: Callable[..., Region]) -> None:
    clock = ManualClock()
    region, iid = one_instance_group(make_aws_region, Hook("launch", "launching", 60, "CONTINUE"), clock=clock)
    asg = region.client("autoscaling", instance_id=iid)

    clock.advance(50)
    asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid)
    clock.advance(50)  # 100 s after launch: past the first 60 s, within 60 s of the heartbeat
    assert region.run_timers() == 0
    assert asg_state(region, iid) == "Pending:Wait"
    (action,) = region.lifecycle_actions(iid)
    assert region.seconds_left(action) == (10.0, 10.0)

    clock.advance(10)
    assert region.run_timers() == 1
    assert asg_state(region, iid) == "InService"  # DefaultResult CONTINUE


def test_global_timeout_caps_heartbeats(make_aws_region: Callable[..., Region]) -> None:
    clock = ManualClock()
    region, iid = one_instance_group(make_aws_region, Hook("launch", "launching", 2000, "ABANDON"), clock=clock)
    asg = region.client("autoscaling", instance_id=iid)
    # Global timeout = min(172800, 100 × 2000) = 172800 s; heartbeat every 1800 s until then.
    elapsed = 0
    while elapsed + 1800 < 172800:
        clock.advance(1800)
        elapsed += 1800
        assert region.run_timers() == 0
        asg.record_lifecycle_action_heartbeat(
            AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid
        )
    clock.advance(172800 - elapsed)
    assert region.run_timers() == 1
    assert region.lifecycle_state(iid) == "Terminated"  # DefaultResult ABANDON on launch


def test_time_factor_scales_timeouts(make_aws_region: Callable[..., Region]) -> None:
    clock = ManualClock()
    hook = Hook("terminate", "terminating", 3600, "CONTINUE")
    region, iid = one_instance_group(make_aws_region, hook, time_factor=0.01, clock=clock)
    region.scale("workers", 0)
    (action,) = region.lifecycle_actions(iid)
    assert region.seconds_left(action) == pytest.approx((36.0, 3600.0))
    assert (region.scaled(3600), region.unscaled(36)) == pytest.approx((36.0, 3600.0))
    clock.advance(35.9)
    assert region.run_timers() == 0
    clock.advance(0.2)
    assert region.run_timers() == 1
    assert region.lifecycle_state(iid) == "Terminating:Proceed"  # still running a while, as on AWS
    clock.advance(0.01 * 30 + 0.01)
    region.run_timers()
    assert region.lifecycle_state(iid) == "Terminated"


@pytest.mark.parametrize(("default", "final"), [("CONTINUE", "InService"), ("ABANDON", "Terminated")])
def test_timeout_applies_default_result_on_the_real_clock(
    make_aws_region: Callable[..., Region], default: str, final: str
) -> None:
    # 30 s heartbeat × 0.002 = 60 ms of wall clock; the scheduler thread applies DefaultResult.
    region, iid = one_instance_group(make_aws_region, Hook("launch", "launching", 30, default), time_factor=0.002)
    region.wait_for_state(iid, final, timeout=10)
    if final == "Terminated":
        assert region.ec2_state(iid) == "terminated"
        region.wait_for(lambda: any(i != iid for i in region.group_instances("workers")), 10, "a replacement")


def test_standby_and_detach_show_in_imds_target_state(aws_region: Region, group: Callable[..., list[str]]) -> None:
    import requests

    a, b = group("workers", 2)
    asg = aws_region.client("autoscaling")
    asg.enter_standby(InstanceIds=[a], AutoScalingGroupName="workers", ShouldDecrementDesiredCapacity=True)
    asg.detach_instances(InstanceIds=[b], AutoScalingGroupName="workers", ShouldDecrementDesiredCapacity=True)
    assert asg_state(aws_region, a) == "Standby"
    assert aws_region.lifecycle_state(b) == "Detached"
    for iid, want in ((a, "Standby"), (b, "Detached")):
        url = aws_region.instance(iid).imds_url
        token = requests.put(url + "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}).text
        got = requests.get(
            url + "/latest/meta-data/autoscaling/target-lifecycle-state", headers={"X-aws-ec2-metadata-token": token}
        )
        assert got.text == want
    assert aws_region.group_instances("workers") == [a]  # no replacement: both decremented


def test_concurrent_agents_complete_their_hooks(aws_region: Region, group: Callable[..., list[str]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ids = group("workers", 8, hooks=(LAUNCH,))
    clients = {iid: aws_region.client("autoscaling", instance_id=iid) for iid in ids}

    def join(iid: str) -> None:
        client = clients[iid]
        client.describe_lifecycle_hooks(AutoScalingGroupName="workers")
        client.record_lifecycle_action_heartbeat(
            AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid
        )
        client.complete_lifecycle_action(
            AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid, LifecycleActionResult="CONTINUE"
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(join, ids))
    assert set(group_states(aws_region, "workers").values()) == {"InService"}
    for iid in ids:
        assert [c.action for c in aws_region.calls(caller=iid)] == [
            "DescribeLifecycleHooks",
            "RecordLifecycleActionHeartbeat",
            "CompleteLifecycleAction",
        ]


def test_denied_action_answers_the_services_access_denied_error(aws_region) -> None:
    """A missing IAM permission, per caller: EC2 UnauthorizedOperation, JSON APIs AccessDeniedException."""
    from botocore.exceptions import ClientError

    aws_region.deny("ec2", "DescribeInstances", caller="operator")
    aws_region.deny("ssm", "*")
    with pytest.raises(ClientError) as exc:
        aws_region.client("ec2").describe_instances()
    assert exc.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert "ec2:DescribeInstances" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:
        aws_region.client("ssm").get_parameter(Name="/x")
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    aws_region.client("ec2").describe_regions()  # other actions still answer
    assert aws_region.calls(action="DescribeInstances")[-1].outcome == "UnauthorizedOperation"
    aws_region.clear_throttles()
    aws_region.client("ec2").describe_instances()
