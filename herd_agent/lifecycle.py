"""ASG lifecycle hooks: find ours, complete the action, heartbeat it.

From the Amazon EC2 Auto Scaling docs: ``CompleteLifecycleAction`` and
``RecordLifecycleActionHeartbeat`` accept the instance id instead of a token; a completed or
expired action answers ``ValidationError`` "No active Lifecycle Action found with instance ID …",
which for us means the action is already over (done, with a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"


@dataclass(frozen=True)
class HookInfo:
    """One lifecycle hook of a group: name, heartbeat timeout (s), global timeout (s), default result."""

    name: str
    heartbeat_timeout_s: int
    global_timeout_s: int
    default_result: str


def hooks(region: str, group: str, transition: str) -> list[HookInfo]:
    """The group's hooks for ``transition`` (``DescribeLifecycleHooks``).

    Raises:
        AwsError: the call failed.
    """
    from herd_agent import aws

    resp = aws.call(aws.client("autoscaling", region), "DescribeLifecycleHooks", AutoScalingGroupName=group)
    out = []
    for h in resp.get("LifecycleHooks", []):
        if h.get("LifecycleTransition") == transition:
            hb = int(h.get("HeartbeatTimeout", 3600))
            out.append(HookInfo(h["LifecycleHookName"], hb, int(h.get("GlobalTimeout", min(172800, 100 * hb))),
                                h.get("DefaultResult", "ABANDON")))
    return out


def complete(region: str, group: str, hook: str, instance_id: str, result: str) -> bool:
    """``CompleteLifecycleAction`` by instance id; True when completed, False when none was active.

    Raises:
        AwsError: any other failure.
    """
    from herd_agent import aws

    try:
        aws.call(aws.client("autoscaling", region), "CompleteLifecycleAction", AutoScalingGroupName=group,
                 LifecycleHookName=hook, InstanceId=instance_id, LifecycleActionResult=result)
    except aws.AwsError as exc:
        if exc.code == "ValidationError" and "No active Lifecycle Action" in str(exc):
            log.warning("lifecycle hook %s: no active action for %s (already completed or timed out)",
                        hook, instance_id)
            return False
        raise
    log.info("lifecycle hook %s: completed %s for %s", hook, result, instance_id)
    return True


def heartbeat(region: str, group: str, hook: str, instance_id: str) -> bool:
    """``RecordLifecycleActionHeartbeat`` by instance id; False when no action is active.

    Raises:
        AwsError: any other failure.
    """
    from herd_agent import aws

    try:
        aws.call(aws.client("autoscaling", region), "RecordLifecycleActionHeartbeat", AutoScalingGroupName=group,
                 LifecycleHookName=hook, InstanceId=instance_id)
    except aws.AwsError as exc:
        if exc.code == "ValidationError" and "No active Lifecycle Action" in str(exc):
            return False
        raise
    return True
