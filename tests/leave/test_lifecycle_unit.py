"""herd_agent.lifecycle with its Auto Scaling client passed in (botocore's Stubber), and the
complete-hook step's retries, without any server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from herd_agent.aws import AwsError
from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.host.fsroot import HostRoot
from herd_agent.leave import journal as jr
from herd_agent.leave.sequence import LeaveSequence
from herd_agent.leave.steps import CompleteHook
from herd_agent.lifecycle import TERMINATING, LifecycleHooks

IDENT = Identity("i-0abc0000000000001", "us-east-1", "us-east-1a", "10.0.0.9", "m6i.large", "workers", "c", "node")
REF = {"AutoScalingGroupName": "workers", "LifecycleHookName": "terminate", "InstanceId": IDENT.instance_id}


@pytest.fixture
def asg() -> Any:
    client = boto3.client("autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def test_hooks_fill_aws_defaults(asg: Any) -> None:
    client, stub = asg
    stub.add_response("describe_lifecycle_hooks", {"LifecycleHooks": [
        {"LifecycleHookName": "terminate", "LifecycleTransition": TERMINATING, "HeartbeatTimeout": 120},
        {"LifecycleHookName": "launch", "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING"},
    ]}, {"AutoScalingGroupName": "workers"})
    (hook,) = LifecycleHooks(client).hooks("workers", TERMINATING)
    assert (hook.name, hook.heartbeat_timeout_s, hook.global_timeout_s, hook.default_result) == (
        "terminate", 120, 12000, "ABANDON")


def test_no_active_action_is_over_not_an_error(asg: Any) -> None:
    client, stub = asg
    message = f"No active Lifecycle Action found with instance ID {IDENT.instance_id}"
    stub.add_client_error("complete_lifecycle_action", "ValidationError", message, 400,
                          expected_params={**REF, "LifecycleActionResult": "CONTINUE"})
    stub.add_client_error("record_lifecycle_action_heartbeat", "ValidationError", message, 400, expected_params=REF)
    hooks = LifecycleHooks(client)
    assert hooks.complete("workers", "terminate", IDENT.instance_id, "CONTINUE") is False
    assert hooks.heartbeat("workers", "terminate", IDENT.instance_id) is False


def context(tmp_path: Path, client: Any, deadline: float) -> Any:
    (tmp_path / "etc/herd-agent").mkdir(parents=True)
    cfg = load_config(HostRoot(tmp_path))
    journal = jr.LeaveJournal(reason="asg-terminate", deadline=deadline,
                              hook={"name": "terminate", "group": "workers", "heartbeat_timeout_s": 60})
    seq = LeaveSequence(HostRoot(tmp_path), cfg, kube_factory=lambda _i: None,
                        lifecycle_factory=lambda _i: LifecycleHooks(client))
    return seq.context(IDENT, journal)


def test_complete_hook_retries_until_the_action_completes(asg: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(CompleteHook, "BACKOFF_MAX_S", 0.01)
    client, stub = asg
    for code, status in (("Throttling", 400), ("InternalFailure", 500), ("AccessDenied", 403)):
        stub.add_client_error("complete_lifecycle_action", code, "no", status,
                              expected_params={**REF, "LifecycleActionResult": "CONTINUE"})
    stub.add_response("complete_lifecycle_action", {}, {**REF, "LifecycleActionResult": "CONTINUE"})
    ctx = context(tmp_path, client, time.time() + 60)
    assert CompleteHook().run(ctx) == "completed CONTINUE"
    assert ctx.journal.result == "CONTINUE"


def test_complete_hook_gives_up_at_the_deadline(asg: Any, tmp_path: Path) -> None:
    import time

    client, stub = asg
    stub.add_client_error("complete_lifecycle_action", "InternalFailure", "no", 500)
    ctx = context(tmp_path, client, time.time() - 1)  # the deadline has passed: one try, no more
    with pytest.raises(AwsError):
        CompleteHook().run(ctx)
