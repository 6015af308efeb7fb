"""EC2 instances, SSM, Secrets Manager, STS through boto3; call log; throttling with botocore retries."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError

from herd_sandbox.aws.region import Region


def running(region: Region, **tags: str) -> dict[str, str]:
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    filters.append({"Name": "instance-state-name", "Values": ["running"]})
    resp = region.client("ec2").describe_instances(Filters=filters)
    return {i["InstanceId"]: i["PrivateIpAddress"] for r in resp["Reservations"] for i in r["Instances"]}


def test_group_instances_carry_tags_and_unique_loopback_ips(
    aws_region: Region, group: Callable[..., list[str]]
) -> None:
    servers = group("servers", 3, tags={"Cluster": "blue", "Role": "control-plane"})
    workers = group("workers", 2, tags={"Cluster": "blue", "Role": "node"})
    resp = aws_region.client("ec2").describe_instances(InstanceIds=servers)
    for inst in (i for r in resp["Reservations"] for i in r["Instances"]):
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["Cluster"] == "blue" and tags["Role"] == "control-plane"
        assert tags["aws:autoscaling:groupName"] == "servers"
        assert inst["PrivateIpAddress"] == aws_region.instance(inst["InstanceId"]).private_ip
    ips = [aws_region.instance(i).private_ip for i in servers + workers]
    assert len(set(ips)) == 5
    assert all(ip.startswith("127.") for ip in ips)
    assert set(running(aws_region, Cluster="blue", Role="control-plane")) == set(servers)
    assert set(running(aws_region, Role="node")) == set(workers)
    by_ip = aws_region.client("ec2").describe_instances(Filters=[{"Name": "private-ip-address", "Values": [ips[0]]}])[
        "Reservations"
    ]
    assert by_ip[0]["Instances"][0]["InstanceId"] == servers[0]


def test_instance_address_can_be_bound(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1)
    with socket.socket() as sock:
        sock.bind((aws_region.instance(iid).private_ip, 0))
        sock.listen(1)
        with socket.create_connection(sock.getsockname(), timeout=2):
            pass


def test_instance_state_filter_drops_terminated(aws_region: Region, group: Callable[..., list[str]]) -> None:
    a, b = group("workers", 2)
    aws_region.terminate_instance(a)
    assert aws_region.lifecycle_state(a) == "Terminated"
    assert set(running(aws_region)) == {b}
    resp = aws_region.client("ec2").describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["terminated"]}]
    )
    assert [i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]] == [a]


def test_ssm_and_secrets_manager(aws_region: Region) -> None:
    ssm = aws_region.client("ssm")
    ssm.put_parameter(Name="/blue/token", Value="s3cret", Type="SecureString", Overwrite=False)
    with pytest.raises(ClientError) as err:
        ssm.put_parameter(Name="/blue/token", Value="other", Type="SecureString", Overwrite=False)
    assert err.value.response["Error"]["Code"] == "ParameterAlreadyExists"
    assert ssm.get_parameter(Name="/blue/token", WithDecryption=True)["Parameter"]["Value"] == "s3cret"
    sm = aws_region.client("secretsmanager")
    sm.create_secret(Name="blue-token", SecretString="t0ken")
    assert sm.get_secret_value(SecretId="blue-token")["SecretString"] == "t0ken"
    ident = aws_region.client("sts").get_caller_identity()
    assert ident["Account"] == aws_region.account_id


def test_call_log_attributes_calls_to_instances(aws_region: Region, group: Callable[..., list[str]]) -> None:
    a, b = group("workers", 2)
    start = time.time()
    aws_region.client("ec2", instance_id=a).describe_instances(InstanceIds=[a])
    aws_region.client("autoscaling", instance_id=b).describe_auto_scaling_instances(InstanceIds=[b])
    with pytest.raises(ClientError):
        aws_region.client("ssm", instance_id=b).get_parameter(Name="/missing")
    assert [(c.service, c.action) for c in aws_region.calls(caller=a)] == [("ec2", "DescribeInstances")]
    by_b = aws_region.calls(caller=b)
    assert [(c.service, c.action, c.outcome) for c in by_b] == [
        ("autoscaling", "DescribeAutoScalingInstances", "ok"),
        ("ssm", "GetParameter", "ParameterNotFound"),
    ]
    assert by_b[0].instance_ids == (b,) and by_b[0].access_key_id == aws_region.instance(b).access_key_id
    assert all(c.time >= start for c in by_b)
    assert [c.caller for c in aws_region.calls(instance=a)] == [a]
    assert {c.action for c in aws_region.calls(caller="operator", service="autoscaling")} >= {"CreateAutoScalingGroup"}
    assert aws_region.calls(since=time.time() + 60) == []
    assert len(aws_region.calls(action=["DescribeInstances", "GetParameter"])) == 2
    assert aws_region.calls(outcome="ParameterNotFound", until=time.time())[0].status == 400


def test_instance_env_has_endpoint_imds_credentials_region(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1)
    env = aws_region.env(iid)
    inst = aws_region.instance(iid)
    assert env["AWS_ENDPOINT_URL"] == aws_region.endpoint_url
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == inst.imds_url
    assert env["AWS_ACCESS_KEY_ID"] == inst.access_key_id != aws_region.env()["AWS_ACCESS_KEY_ID"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_SECRET_ACCESS_KEY"] and env["AWS_SESSION_TOKEN"]


def test_plain_boto3_reaches_the_region_via_aws_endpoint_url(
    aws_region: Region, group: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    (iid,) = group("workers", 1)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in aws_region.env(iid).items():
        monkeypatch.setenv(key, value)
    ec2 = boto3.session.Session().client("ec2")
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["InstanceId"] == iid
    assert aws_region.calls(caller=iid, action="DescribeInstances")


# -- throttling --------------------------------------------------------------------------------

THROTTLE_CASES = [
    ("ec2", "DescribeInstances", lambda c: c.describe_instances(), "RequestLimitExceeded", 503),
    ("autoscaling", "DescribeAutoScalingGroups", lambda c: c.describe_auto_scaling_groups(), "Throttling", 400),
    ("ssm", "DescribeParameters", lambda c: c.describe_parameters(), "ThrottlingException", 400),
    ("secretsmanager", "ListSecrets", lambda c: c.list_secrets(), "ThrottlingException", 400),
]


@pytest.mark.parametrize(("service", "action", "call", "code", "status"), THROTTLE_CASES)
def test_throttling_is_retried_by_standard_mode(
    aws_region: Region, no_backoff: list[bool], service: str, action: str, call: Callable, code: str, status: int
) -> None:
    client = aws_region.client(service, retries={"mode": "standard", "total_max_attempts": 3})
    aws_region.throttle(service, action, burst=2)
    resp = call(client)
    assert resp["ResponseMetadata"]["RetryAttempts"] == 2
    assert no_backoff == [True, True]  # botocore saw throttling errors both times
    outcomes = [c.outcome for c in aws_region.calls(service=service, action=action)]
    assert outcomes == ["throttled", "throttled", "ok"]


@pytest.mark.parametrize(("service", "action", "call", "code", "status"), THROTTLE_CASES)
def test_throttling_surfaces_when_retries_run_out(
    aws_region: Region, no_backoff: list[bool], service: str, action: str, call: Callable, code: str, status: int
) -> None:
    client = aws_region.client(service, retries={"mode": "standard", "total_max_attempts": 3})
    aws_region.throttle(service, "*", rate=1.0)
    with pytest.raises(ClientError) as err:
        call(client)
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert no_backoff == [True, True]
    aws_region.clear_throttles()
    call(client)


def test_throttle_rate_is_a_fraction(make_aws_region: Callable[..., Region]) -> None:
    region = make_aws_region(throttle_seed=7)
    client = region.client("sts", retries={"mode": "standard", "total_max_attempts": 1})
    region.throttle("sts", "GetCallerIdentity", rate=0.5)
    failures = 0
    for _ in range(40):
        try:
            client.get_caller_identity()
        except ClientError as err:
            assert err.response["Error"]["Code"] == "Throttling"
            failures += 1
    assert 8 <= failures <= 32
    assert len(region.calls(outcome="throttled")) == failures


def test_throttle_rejects_bad_values(aws_region: Region) -> None:
    with pytest.raises(ValueError):
        aws_region.throttle("ec2", rate=1.5)
    with pytest.raises(ValueError):
        aws_region.throttle("ec2", burst=-1)
