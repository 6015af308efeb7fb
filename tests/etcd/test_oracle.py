"""Ec2InstanceOracle with its AWS clients passed in (botocore Stubber): EC2 states plus the Auto
Scaling lifecycle and health facts that make a member *going away*."""

from __future__ import annotations

import boto3
from botocore.stub import Stubber

from herd_agent.etcd.client import Member
from herd_agent.etcd.gc import Ec2InstanceOracle, InstanceInfo, assess, cloud_evidence, going_away_verdict


def _instance(iid, ip, state):
    return {"InstanceId": iid, "PrivateIpAddress": ip, "State": {"Name": state}, "PrivateDnsName": "", "Tags": []}


def _clients():
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    asg = boto3.client("autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return ec2, asg


def test_oracle_adds_auto_scaling_facts_for_live_instances():
    ec2, asg = _clients()
    with Stubber(ec2) as s_ec2, Stubber(asg) as s_asg:
        s_ec2.add_response("describe_instances", {"Reservations": [{"Instances": [
            _instance("i-0000000000000000a", "10.0.0.1", "running"),
            _instance("i-0000000000000000b", "10.0.0.2", "terminated")]}]},
            {"Filters": [{"Name": "instance-id", "Values": ["i-0000000000000000a", "i-0000000000000000b"]}]})
        s_ec2.add_response("describe_instances", {"Reservations": []},
                           {"Filters": [{"Name": "private-ip-address", "Values": ["10.0.0.1", "10.0.0.2"]}]})
        # only the live instance is asked about; the terminated one is gone already
        s_asg.add_response("describe_auto_scaling_instances", {"AutoScalingInstances": [{
            "InstanceId": "i-0000000000000000a", "AutoScalingGroupName": "cp", "AvailabilityZone": "us-east-1a",
            "LifecycleState": "Terminating:Wait", "HealthStatus": "HEALTHY", "ProtectedFromScaleIn": False}]},
            {"InstanceIds": ["i-0000000000000000a"]})
        found = {i.instance_id: i for i in Ec2InstanceOracle("us-east-1", client=ec2, autoscaling=asg).describe(
            ["i-0000000000000000a", "i-0000000000000000b"], ["10.0.0.1", "10.0.0.2"])}
        s_ec2.assert_no_pending_responses()
        s_asg.assert_no_pending_responses()
    a = found["i-0000000000000000a"]
    assert (a.state, a.lifecycle_state, a.health_status) == ("running", "Terminating:Wait", "HEALTHY")
    assert a.going_away and found["i-0000000000000000b"].going_away


def test_auto_scaling_refusal_keeps_ec2_facts():
    ec2, asg = _clients()
    with Stubber(ec2) as s_ec2, Stubber(asg) as s_asg:
        s_ec2.add_response("describe_instances", {"Reservations": [{"Instances": [
            _instance("i-0000000000000000a", "10.0.0.1", "running")]}]})
        s_asg.add_client_error("describe_auto_scaling_instances", "AccessDenied", "not allowed")
        [a] = Ec2InstanceOracle("us-east-1", client=ec2, autoscaling=asg).describe(["i-0000000000000000a"], [])
    assert a.state == "running" and a.lifecycle_state == "" and not a.going_away


def _m(mid, name, ip):
    return Member(mid, name, (f"https://{ip}:2380",), (f"https://{ip}:2379",))


def test_going_away_needs_silence_and_cloud_word():
    m = _m(7, "i-0000000000000000a", "10.0.0.1")
    leaving = InstanceInfo("i-0000000000000000a", "10.0.0.1", "running", lifecycle_state="Terminating:Wait")
    unhealthy = InstanceInfo("i-0000000000000000a", "10.0.0.1", "running", lifecycle_state="InService",
                             health_status="Unhealthy")
    staying = InstanceInfo("i-0000000000000000a", "10.0.0.1", "running", lifecycle_state="InService")
    assert going_away_verdict(m, [leaving])[0] and going_away_verdict(m, [unhealthy])[0]
    assert not going_away_verdict(m, [staying])[0]
    for silent, expected in (((), []), ((7,), [("going-away", True)])):
        _, cands = assess([m], [leaving], {}, 1000.0, stale_grace_s=300, unstarted_grace_s=600, silent=silent,
                          going_away_grace_s=0)
        assert [(c.reason, c.ripe) for c in cands] == expected
    _, [c] = assess([m], [leaving], {}, 1000.0, stale_grace_s=300, unstarted_grace_s=600, silent=(7,))
    assert c.reason == "going-away" and not c.ripe  # periodic passes keep the grace period


def test_cloud_evidence():
    a, b = _m(1, "i-a", "10.0.0.1"), _m(2, "i-b", "10.0.0.2")
    ghost = Member(3, "", ("https://10.0.0.3:2380",))
    assert cloud_evidence([a, b], silent=(), known={"1": "i-a", "2": "i-b"}, seen={}) == []
    unknown = cloud_evidence([a, b], silent=(), known={"1": "i-a"}, seen={})
    assert unknown == ["2 (i-b) is not yet confirmed by the cloud"]
    assert "does not answer" in cloud_evidence([a, b], silent=(2,), known={"1": "i-a", "2": "i-b"}, seen={})[0]
    assert "stale candidate" in cloud_evidence([a, b], silent=(), known={"1": "i-a", "2": "i-b"}, seen={"2": {}})[0]
    assert "unstarted" in cloud_evidence([a, ghost], silent=(), known={"1": "i-a"}, seen={})[0]
    assert cloud_evidence([a, b], silent=(1,), known={"2": "i-b"}, seen={}, self_id=1) == []
