"""ASG lifecycle hooks: find ours, complete the action, heartbeat it.

From the Amazon EC2 Auto Scaling docs: ``CompleteLifecycleAction`` and
``RecordLifecycleActionHeartbeat`` accept the instance id instead of a token; a completed or
expired action answers ``ValidationError`` "No active Lifecycle Action found with instance ID …",
which for us means the action is already over (done, with a warning).

The Auto Scaling client is a parameter (:class:`LifecycleHooks`), so unit tests drive these calls
with botocore's ``Stubber``; the module functions build the region's client for callers that have
none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

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


def _no_active_action(exc: Any) -> bool:
    return getattr(exc, "code", None) == "ValidationError" and "No active Lifecycle Action" in str(exc)


class LifecycleHooks:
    """Lifecycle-hook calls over one boto3 ``autoscaling`` client.

    Args:
        client: a boto3 Auto Scaling client (botocore's standard retry mode retries throttling and
            5xx inside each call; what still fails raises :class:`herd_agent.aws.AwsError`).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def for_region(cls, region: str) -> LifecycleHooks:
        """The shared client of ``region`` (:func:`herd_agent.aws.client`)."""
        from herd_agent import aws

        return cls(aws.client("autoscaling", region))

    def hooks(self, group: str, transition: str) -> list[HookInfo]:
        """The group's hooks for ``transition`` (``DescribeLifecycleHooks``); AWS's defaults fill
        what a hook leaves out (heartbeat 3600 s, global min(172800, 100 × heartbeat), ABANDON).

        Raises:
            AwsError: the call failed.
        """
        from herd_agent import aws

        resp = aws.call(self.client, "DescribeLifecycleHooks", AutoScalingGroupName=group)
        out = []
        for h in resp.get("LifecycleHooks", []):
            if h.get("LifecycleTransition") == transition:
                hb = int(h.get("HeartbeatTimeout", 3600))
                out.append(HookInfo(h["LifecycleHookName"], hb,
                                    int(h.get("GlobalTimeout", min(172800, 100 * hb))),
                                    h.get("DefaultResult", "ABANDON")))
        return out

    def complete(self, group: str, hook: str, instance_id: str, result: str) -> bool:
        """``CompleteLifecycleAction`` by instance id; True when completed, False when none was active.

        Raises:
            AwsError: any other failure (throttled past botocore's attempts, 5xx, AccessDenied…).
        """
        from herd_agent import aws

        try:
            aws.call(self.client, "CompleteLifecycleAction", AutoScalingGroupName=group,
                     LifecycleHookName=hook, InstanceId=instance_id, LifecycleActionResult=result)
        except aws.AwsError as exc:
            if _no_active_action(exc):
                log.warning("lifecycle hook %s: no active action for %s (already completed or timed out)",
                            hook, instance_id)
                return False
            raise
        log.info("lifecycle hook %s: completed %s for %s", hook, result, instance_id)
        return True

    def heartbeat(self, group: str, hook: str, instance_id: str) -> bool:
        """``RecordLifecycleActionHeartbeat`` by instance id; False when no action is active.

        Raises:
            AwsError: any other failure.
        """
        from herd_agent import aws

        try:
            aws.call(self.client, "RecordLifecycleActionHeartbeat", AutoScalingGroupName=group,
                     LifecycleHookName=hook, InstanceId=instance_id)
        except aws.AwsError as exc:
            if _no_active_action(exc):
                return False
            raise
        return True


def hooks(region: str, group: str, transition: str) -> list[HookInfo]:
    """:meth:`LifecycleHooks.hooks` with the region's shared client."""
    return LifecycleHooks.for_region(region).hooks(group, transition)


def complete(region: str, group: str, hook: str, instance_id: str, result: str) -> bool:
    """:meth:`LifecycleHooks.complete` with the region's shared client."""
    return LifecycleHooks.for_region(region).complete(group, hook, instance_id, result)


def heartbeat(region: str, group: str, hook: str, instance_id: str) -> bool:
    """:meth:`LifecycleHooks.heartbeat` with the region's shared client."""
    return LifecycleHooks.for_region(region).heartbeat(group, hook, instance_id)
