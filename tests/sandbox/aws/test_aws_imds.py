"""The per-instance IMDSv2 emulator: tokens, status codes, identity, tags, events, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests

from herd_sandbox.aws.imds import Fault
from herd_sandbox.aws.region import Hook, Region

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


class Imds:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def token(self, ttl: str | None = "21600", **headers: str) -> requests.Response:
        # The region's time factor scales token TTLs (0.01 here): the longest TTL AWS allows
        # (6 h, 216 s scaled) outlives any test that reuses one token, however slow the machine.
        if ttl is not None:
            headers[TTL] = ttl
        return self.http.put(self.url + "/latest/api/token", headers=headers, timeout=5)

    def get(self, path: str, token: str | None = None) -> requests.Response:
        if token is None:
            token = self.token().text
        return self.http.get(f"{self.url}/latest/{path}", headers={TOKEN: token} if token else {}, timeout=5)


@pytest.fixture
def instance(aws_region: Region, group: Callable[..., list[str]]) -> str:
    (iid,) = group("workers", 1, tags={"Cluster": "blue", "Role": "node"})
    return iid


@pytest.fixture
def imds(aws_region: Region, instance: str) -> Imds:
    return Imds(aws_region.instance(instance).imds_url)


def test_imds_listens_on_the_instance_address(aws_region: Region, instance: str) -> None:
    inst = aws_region.instance(instance)
    assert inst.imds_url.startswith(f"http://{inst.private_ip}:")
    assert inst.private_ip.startswith("127.") and inst.private_ip != "127.0.0.1"


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-5", "abc"])
def test_token_needs_a_ttl_within_1_to_21600(imds: Imds, ttl: str | None) -> None:
    assert imds.token(ttl).status_code == 400


@pytest.mark.parametrize("ttl", ["1", "21600"])
def test_token_issued_with_ttl_header(imds: Imds, ttl: str) -> None:
    resp = imds.token(ttl)
    assert resp.status_code == 200
    assert resp.text
    assert resp.headers[TTL] == ttl


def test_token_put_with_forwarded_for_is_forbidden(imds: Imds) -> None:
    assert imds.token("60", **{"X-Forwarded-For": "127.0.0.9"}).status_code == 403


def test_get_without_or_with_bad_token_is_401(imds: Imds) -> None:
    assert imds.get("meta-data/instance-id", token="").status_code == 401
    assert imds.get("meta-data/instance-id", token="not-a-token").status_code == 401
    assert imds.get("meta-data/instance-id").status_code == 200


def test_token_of_another_instance_is_401(aws_region: Region, group: Callable[..., list[str]]) -> None:
    a, b = group("pair", 2)
    imds_a, imds_b = Imds(aws_region.instance(a).imds_url), Imds(aws_region.instance(b).imds_url)
    assert imds_b.get("meta-data/instance-id", token=imds_a.token().text).status_code == 401


def test_token_expires(make_aws_region: Callable[..., Region]) -> None:
    region = make_aws_region(imds_token_time_factor=0.05)  # TTL 1 s → 50 ms
    region.create_launch_template("workers-lt")
    region.create_group("workers", "workers-lt", desired=1)
    (iid,) = region.group_instances("workers")
    imds = Imds(region.instance(iid).imds_url)
    token = imds.token("1").text
    long_lived = imds.token("3600").text
    deadline = time.monotonic() + 5
    while imds.get("meta-data/instance-id", token=token).status_code == 200:
        assert time.monotonic() < deadline, "a 1 s token (50 ms scaled) did not expire"
    assert imds.get("meta-data/instance-id", token=token).status_code == 401
    assert imds.get("meta-data/instance-id", token=long_lived).status_code == 200


def test_identity_document_and_meta_data(aws_region: Region, instance: str, imds: Imds) -> None:
    token = imds.token().text
    doc = json.loads(imds.get("dynamic/instance-identity/document", token).text)
    inst = aws_region.instance(instance)
    described = aws_region.client("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    assert doc["instanceId"] == instance
    assert doc["region"] == "us-east-1"
    assert doc["availabilityZone"] == described["Placement"]["AvailabilityZone"]
    assert doc["privateIp"] == inst.private_ip == described["PrivateIpAddress"]
    assert doc["instanceType"] == described["InstanceType"]
    assert doc["imageId"] == described["ImageId"]
    assert doc["accountId"] == aws_region.account_id
    meta = {
        "instance-id": instance,
        "local-ipv4": inst.private_ip,
        "local-hostname": described["PrivateDnsName"],
        "placement/region": "us-east-1",
        "placement/availability-zone": described["Placement"]["AvailabilityZone"],
        "instance-type": described["InstanceType"],
        "mac": described["NetworkInterfaces"][0]["MacAddress"] if described.get("NetworkInterfaces") else None,
    }
    for key, want in meta.items():
        resp = imds.get(f"meta-data/{key}", token)
        assert resp.status_code == 200, key
        if want is not None:
            assert resp.text == want, key
    assert imds.get("user-data", token).text == "#!/bin/sh\necho hello\n"


def test_unknown_paths_are_404(imds: Imds) -> None:
    token = imds.token().text
    for path in ("meta-data/no-such-thing", "dynamic/nope", "nothing", "meta-data/tags/instance/Missing"):
        assert imds.get(path, token).status_code == 404, path
    assert imds.http.get(imds.url + "/elsewhere", headers={TOKEN: token}, timeout=5).status_code == 404


def test_tags_enabled_and_disabled(aws_region: Region, instance: str, imds: Imds) -> None:
    token = imds.token().text
    keys = imds.get("meta-data/tags/instance", token).text.splitlines()
    assert {"Cluster", "Role", "aws:autoscaling:groupName"} <= set(keys)
    assert imds.get("meta-data/tags/instance/Role", token).text == "node"
    assert imds.get("meta-data/tags/instance/aws:autoscaling:groupName", token).text == "workers"
    aws_region.set_metadata_tags(instance, False)
    assert imds.get("meta-data/tags/instance", token).status_code == 404
    assert imds.get("meta-data/tags/instance/Role", token).status_code == 404


def test_tags_follow_the_launch_template(aws_region: Region) -> None:
    aws_region.create_launch_template("quiet-lt", metadata_tags=False)
    aws_region.create_group("quiet", "quiet-lt", desired=1, tags={"Cluster": "x"})
    (iid,) = aws_region.group_instances("quiet")
    assert Imds(aws_region.instance(iid).imds_url).get("meta-data/tags/instance").status_code == 404


def test_target_lifecycle_state_follows_the_group(aws_region: Region, group: Callable[..., list[str]]) -> None:
    (iid,) = group("workers", 1, hooks=(Hook("launch", "launching"), Hook("terminate", "terminating")))
    imds = Imds(aws_region.instance(iid).imds_url)
    path = "meta-data/autoscaling/target-lifecycle-state"
    assert imds.get(path).text == "InService"  # launching: the target is InService
    asg = aws_region.client("autoscaling")
    asg.complete_lifecycle_action(
        AutoScalingGroupName="workers", LifecycleHookName="launch", InstanceId=iid, LifecycleActionResult="CONTINUE"
    )
    assert imds.get(path).text == "InService"
    aws_region.scale("workers", 0)
    assert aws_region.lifecycle_state(iid) == "Terminating:Wait"
    assert imds.get(path).text == "Terminated"


def test_target_lifecycle_state_404_outside_a_group(aws_region: Region) -> None:
    aws_region.create_launch_template("solo-lt")
    (inst,) = aws_region.client("ec2").run_instances(
        LaunchTemplate={"LaunchTemplateName": "solo-lt"}, MinCount=1, MaxCount=1
    )["Instances"]
    imds = Imds(aws_region.instance(inst["InstanceId"]).imds_url)
    assert imds.get("meta-data/autoscaling/target-lifecycle-state").status_code == 404
    assert imds.get("meta-data/local-ipv4").text == inst["PrivateIpAddress"]


def test_spot_interruption(aws_region: Region, instance: str, imds: Imds) -> None:
    assert imds.get("meta-data/spot/instance-action").status_code == 404
    before = datetime.now(UTC).replace(microsecond=0)
    aws_region.inject_spot_interruption(instance, "stop")
    doc = json.loads(imds.get("meta-data/spot/instance-action").text)
    assert doc["action"] == "stop"
    assert doc["time"].endswith("Z")
    when = datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 119 <= (when - before).total_seconds() <= 125
    with pytest.raises(ValueError):
        aws_region.inject_spot_interruption(instance, "explode")


def test_rebalance_and_maintenance(aws_region: Region, instance: str, imds: Imds) -> None:
    assert imds.get("meta-data/events/recommendations/rebalance").status_code == 404
    assert json.loads(imds.get("meta-data/events/maintenance/scheduled").text) == []
    aws_region.inject_rebalance(instance)
    notice = json.loads(imds.get("meta-data/events/recommendations/rebalance").text)
    datetime.strptime(notice["noticeTime"], "%Y-%m-%dT%H:%M:%SZ")
    event = aws_region.inject_maintenance_event(instance, code="instance-reboot")
    (listed,) = json.loads(imds.get("meta-data/events/maintenance/scheduled").text)
    assert listed == event
    assert set(listed) == {"NotBefore", "Code", "Description", "EventId", "NotAfter", "State"}
    assert listed["Code"] == "instance-reboot" and listed["EventId"].startswith("instance-event-")
    datetime.strptime(listed["NotBefore"], "%d %b %Y %H:%M:%S GMT")


def test_fault_500_on_one_path_then_expires(aws_region: Region, instance: str, imds: Imds) -> None:
    token = imds.token().text
    aws_region.inject_imds_fault(instance, Fault(path="/latest/meta-data/spot", status=500, remaining=2))
    assert imds.get("meta-data/spot/instance-action", token).status_code == 500
    assert imds.get("meta-data/instance-id", token).status_code == 200  # other paths unaffected
    assert imds.get("meta-data/spot/instance-action", token).status_code == 500
    assert imds.get("meta-data/spot/instance-action", token).status_code == 404  # fault used up


def test_fault_drop_connection(aws_region: Region, instance: str, imds: Imds) -> None:
    aws_region.inject_imds_fault(instance, Fault(drop=True, remaining=1))
    with pytest.raises(requests.ConnectionError):
        imds.token()
    assert imds.token().status_code == 200


def test_fault_delay(aws_region: Region, instance: str, imds: Imds) -> None:
    token = imds.token().text
    aws_region.inject_imds_fault(instance, Fault(path="/latest/meta-data/instance-id", delay=0.3))
    with pytest.raises(requests.Timeout):
        imds.http.get(imds.url + "/latest/meta-data/instance-id", headers={TOKEN: token}, timeout=0.1)
    aws_region.instance(instance).imds.clear_faults()
    assert imds.get("meta-data/instance-id", token).text == instance


def test_botocore_imds_fetcher_uses_the_endpoint(aws_region: Region, instance: str) -> None:
    from botocore.utils import InstanceMetadataRegionFetcher

    url = aws_region.instance(instance).imds_url
    fetcher = InstanceMetadataRegionFetcher(timeout=2, num_attempts=1, config={"ec2_metadata_service_endpoint": url})
    assert fetcher.retrieve_region() == "us-east-1"
