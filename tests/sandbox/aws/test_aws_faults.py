"""Injected AWS faults (herd_sandbox.aws.faults): 5xx and transient AccessDenied per action and
caller, answered in each protocol's real error shape, labelled truly in the call log, driven from
Python and from the ``herd-sandbox aws fault`` CLI."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from herd_sandbox.aws.cli import aws as aws_cli
from herd_sandbox.aws.faults import AwsFault
from herd_sandbox.aws.region import Region


def once(region: Region, service: str, instance_id: str | None = None):
    return region.client(service, instance_id, retries={"mode": "standard", "total_max_attempts": 1})


def test_5xx_then_ok_labelled_in_the_call_log(aws_region: Region, group: Callable[..., list[str]]) -> None:
    group("workers", 1)
    aws_region.faults.add(AwsFault("autoscaling", "DescribeAutoScalingGroups", "5xx", count=2))
    asg = once(aws_region, "autoscaling")
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            asg.describe_auto_scaling_groups()
        assert exc.value.response["Error"]["Code"] == "InternalFailure"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert asg.describe_auto_scaling_groups()["AutoScalingGroups"]
    calls = aws_region.calls(action="DescribeAutoScalingGroups")[-3:]
    assert [(c.outcome, c.status) for c in calls] == [("fault-5xx", 500), ("fault-5xx", 500), ("ok", 200)]
    assert aws_region.faults.rules() == []


def test_botocore_retries_5xx_but_not_access_denied(aws_region: Region, group: Callable[..., list[str]],
                                                     no_backoff: list[bool]) -> None:
    group("workers", 1)
    aws_region.faults.add(AwsFault("ec2", "DescribeInstances", "5xx", count=2))
    assert aws_region.client("ec2", retries={"mode": "standard", "total_max_attempts": 3}).describe_instances()
    aws_region.faults.add(AwsFault("ec2", "DescribeInstances", "access-denied", count=1))
    with pytest.raises(ClientError) as exc:
        aws_region.client("ec2", retries={"mode": "standard", "total_max_attempts": 3}).describe_instances()
    assert exc.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert "ec2:DescribeInstances" in exc.value.response["Error"]["Message"]
    outcomes = [c.outcome for c in aws_region.calls(action="DescribeInstances")[-4:]]
    assert outcomes == ["fault-5xx", "fault-5xx", "ok", "fault-access-denied"]


def test_access_denied_for_one_caller_only(aws_region: Region, group: Callable[..., list[str]]) -> None:
    a, b = group("workers", 2)
    aws_region.faults.add(AwsFault("ssm", "*", "access-denied", count=None, caller=a))
    with pytest.raises(ClientError) as exc:
        once(aws_region, "ssm", a).get_parameter(Name="/nope")
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        once(aws_region, "ssm", b).get_parameter(Name="/nope")
    assert exc.value.response["Error"]["Code"] == "ParameterNotFound"
    aws_region.faults.clear()
    with pytest.raises(ClientError) as exc:
        once(aws_region, "ssm", a).get_parameter(Name="/nope")
    assert exc.value.response["Error"]["Code"] == "ParameterNotFound"


def test_cli_injects_into_a_running_region(aws_region: Region, group: Callable[..., list[str]]) -> None:
    group("workers", 1)
    runner = CliRunner()
    out = runner.invoke(aws_cli, ["fault", "--endpoint", aws_region.endpoint_url,
                                  "autoscaling:DescribeAutoScalingGroups=5xx*1"])
    assert out.exit_code == 0, out.output
    assert '"kind": "5xx"' in out.output
    with pytest.raises(ClientError):
        once(aws_region, "autoscaling").describe_auto_scaling_groups()
    assert once(aws_region, "autoscaling").describe_auto_scaling_groups()
    bad = runner.invoke(aws_cli, ["fault", "--endpoint", aws_region.endpoint_url, "autoscaling=5xx"])
    assert bad.exit_code == 2 and "service:Action=5xx|access-denied" in bad.output
    runner.invoke(aws_cli, ["fault", "--endpoint", aws_region.endpoint_url, "ec2:*=5xx*9"])
    cleared = runner.invoke(aws_cli, ["fault", "--endpoint", aws_region.endpoint_url, "--clear"])
    assert cleared.exit_code == 0 and cleared.output.strip() == "[]"
