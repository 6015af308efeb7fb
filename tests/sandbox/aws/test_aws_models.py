"""Every action the sandbox adds or overrides answers in a shape botocore's service model accepts.

Each response is parsed by boto3 and then validated against the operation's output shape from
botocore's own model (types, required members), so a missing or mistyped member fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.validate import ParamValidator

from herd_sandbox.aws.region import Region


class ShapeChecker:
    def __init__(self) -> None:
        self.checked: list[str] = []
        self.problems: list[str] = []

    def __call__(self, http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.checked.append(model.name)
        if model.output_shape is None or "Error" in parsed:
            return
        body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
        report = ParamValidator().validate(body, model.output_shape)
        if report.has_errors():
            self.problems.append(f"{model.name}: {report.generate_report()}")

    def attach(self, client: Any) -> Any:
        client.meta.events.register("after-call", self)
        return client


def test_shape_checker_catches_a_bad_member() -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model("autoscaling")
    checker = ShapeChecker()
    bad = {"AutoScalingGroups": [{"AutoScalingGroupName": 5}]}
    checker(None, bad, model.operation_model("DescribeAutoScalingGroups"))
    assert checker.problems


def test_added_and_overridden_actions_match_the_models(aws_region: Region) -> None:
    checker = ShapeChecker()
    asg = checker.attach(aws_region.client("autoscaling"))
    ec2 = checker.attach(aws_region.client("ec2"))
    aws_region.create_launch_template("workers-lt", user_data="#!/bin/sh\n")
    asg.create_auto_scaling_group(
        AutoScalingGroupName="workers",
        LaunchTemplate={"LaunchTemplateName": "workers-lt", "Version": "$Latest"},
        MinSize=0,
        MaxSize=6,
        DesiredCapacity=3,
        AvailabilityZones=["us-east-1a"],
        LifecycleHookSpecificationList=[
            {"LifecycleHookName": "launch", "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING"},
        ],
        Tags=[{"Key": "Cluster", "Value": "blue", "PropagateAtLaunch": True}],
    )
    asg.put_lifecycle_hook(
        AutoScalingGroupName="workers",
        LifecycleHookName="terminate",
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=300,
        DefaultResult="CONTINUE",
    )
    a, b, c = aws_region.group_instances("workers")
    asg.describe_lifecycle_hooks(AutoScalingGroupName="workers")
    asg.describe_auto_scaling_instances(InstanceIds=[a])
    asg.describe_auto_scaling_groups(AutoScalingGroupNames=["workers"])
    asg.record_lifecycle_action_heartbeat(AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=a)
    token = aws_region.lifecycle_actions(b)[0].token
    asg.record_lifecycle_action_heartbeat(
        AutoScalingGroupName="workers", LifecycleHookName="launch", LifecycleActionToken=token
    )
    for iid in (a, b, c):
        asg.complete_lifecycle_action(
            AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid, LifecycleActionResult="CONTINUE"
        )
    asg.terminate_instance_in_auto_scaling_group(InstanceId=a, ShouldDecrementDesiredCapacity=True)
    asg.set_instance_health(InstanceId=b, HealthStatus="Unhealthy")
    asg.set_desired_capacity(AutoScalingGroupName="workers", DesiredCapacity=1)
    asg.update_auto_scaling_group(AutoScalingGroupName="workers", MaxSize=4, DesiredCapacity=2)
    asg.detach_instances(InstanceIds=[c], AutoScalingGroupName="workers", ShouldDecrementDesiredCapacity=True)
    asg.describe_auto_scaling_groups(AutoScalingGroupNames=["workers"])
    asg.describe_auto_scaling_instances()
    ec2.describe_instances(Filters=[{"Name": "tag:Cluster", "Values": ["blue"]}])
    ec2.run_instances(LaunchTemplate={"LaunchTemplateName": "workers-lt"}, MinCount=1, MaxCount=1)
    ec2.terminate_instances(InstanceIds=[c])
    assert checker.problems == []
    assert {
        "CreateAutoScalingGroup",
        "PutLifecycleHook",
        "DescribeLifecycleHooks",
        "RecordLifecycleActionHeartbeat",
        "CompleteLifecycleAction",
        "TerminateInstanceInAutoScalingGroup",
        "SetInstanceHealth",
        "SetDesiredCapacity",
        "DetachInstances",
        "RunInstances",
    } <= set(checker.checked)
    assert aws_region.lifecycle_state(c) == "Detached"


@pytest.mark.parametrize(
    ("service", "call", "code"),
    [
        ("ec2", lambda c: c.describe_instances(), "RequestLimitExceeded"),
        ("autoscaling", lambda c: c.describe_lifecycle_hooks(AutoScalingGroupName="x"), "Throttling"),
        ("ssm", lambda c: c.get_parameter(Name="x"), "ThrottlingException"),
        ("secretsmanager", lambda c: c.get_secret_value(SecretId="x"), "ThrottlingException"),
        ("sts", lambda c: c.get_caller_identity(), "Throttling"),
    ],
)
def test_error_shapes_parse(aws_region: Region, service: str, call: Any, code: str) -> None:
    client = aws_region.client(service, retries={"mode": "standard", "total_max_attempts": 1})
    aws_region.throttle(service, burst=1)
    with pytest.raises(ClientError) as err:
        call(client)
    error = err.value.response["Error"]
    assert error["Code"] == code
    assert error["Message"]
    assert err.value.response["ResponseMetadata"]["RequestId"]
