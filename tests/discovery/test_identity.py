"""Identity over IMDSv2 from the sandbox region: tags via IMDS or DescribeTags, clear tag errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd_agent import aws
from herd_agent.config import load_config
from herd_agent.discovery.identity import TagError, read_identity
from herd_agent.discovery.imds import ImdsClient, ImdsError
from herd_agent.errors import ExitCode
from herd_agent.host.fsroot import HostRoot
from herd_sandbox.aws.region import Region


def launch(region: Region, tags: dict[str, str], name: str) -> str:
    region.create_launch_template(f"{name}-lt")
    region.create_group(name, f"{name}-lt", desired=1, tags=tags)
    return region.group_instances(name)[0]


@pytest.fixture
def aws_region(shared_region: Region) -> Region:
    return shared_region


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch):
    """Point this process's boto3 at the region as the agent on `instance_id` would be."""

    def use(region: Region, instance_id: str) -> None:
        for k, v in region.env(instance_id).items():
            monkeypatch.setenv(k, v)
        aws.reset_clients()

    yield use
    aws.reset_clients()


def cfg_for(tmp_path: Path, text: str = ""):
    if text:
        (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/herd-agent/config.yaml").write_text(text)
    return load_config(HostRoot(tmp_path))


def test_identity_from_imds_tags(aws_region: Region, tmp_path: Path, agent_env, unique: str) -> None:
    iid = launch(aws_region, {"herd:cluster": "blue", "herd:role": "control-plane"}, unique)
    agent_env(aws_region, iid)
    inst = aws_region.instance(iid)
    imds = ImdsClient(inst.imds_url)
    ident = read_identity(imds, cfg_for(tmp_path))
    assert ident.instance_id == iid
    assert ident.private_ip == inst.private_ip and ident.private_ip.startswith("127.")
    assert ident.region == "us-east-1" and ident.availability_zone.startswith("us-east-1")
    assert (ident.cluster, ident.role, ident.asg_name) == ("blue", "control-plane", unique)
    assert ident.tags_source == "imds"
    # The VPC (discovery's scope) from meta-data/network/interfaces/macs/<mac>/vpc-id, as EC2 knows it.
    vpc = aws_region.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["VpcId"]
    assert ident.vpc_id == vpc and vpc.startswith("vpc-")
    # Identity is IMDS-only: no AWS API call was made.
    assert aws_region.calls(caller=iid) == []


def test_identity_falls_back_to_describe_tags(aws_region: Region, tmp_path: Path, agent_env, unique: str) -> None:
    iid = launch(aws_region, {"Cluster": "green", "Role": "node"}, unique)
    aws_region.set_metadata_tags(iid, False)
    agent_env(aws_region, iid)
    cfg = cfg_for(tmp_path, "identity:\n  cluster_tag: Cluster\n  role_tag: Role\n")
    ident = read_identity(ImdsClient(aws_region.instance(iid).imds_url), cfg)
    assert (ident.cluster, ident.role, ident.tags_source) == ("green", "node", "ec2:DescribeTags")
    assert [c.action for c in aws_region.calls(caller=iid)] == ["DescribeTags"]


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"herd:role": "node"}, "instance tag 'herd:cluster' is missing"),
        ({"herd:cluster": "Blue_Cluster", "herd:role": "node"}, "is not a valid cluster name"),
        ({"herd:cluster": "blue"}, "instance tag 'herd:role' is missing"),
        ({"herd:cluster": "blue", "herd:role": "master"}, "herd:role='master' is neither 'control-plane' nor 'node'"),
    ],
)
def test_missing_or_malformed_tags(aws_region: Region, tmp_path: Path, agent_env, unique: str, tags, message) -> None:
    iid = launch(aws_region, tags, unique)
    agent_env(aws_region, iid)
    with pytest.raises(TagError) as exc:
        read_identity(ImdsClient(aws_region.instance(iid).imds_url), cfg_for(tmp_path))
    assert message in str(exc.value)
    assert exc.value.exit_code == ExitCode.DATA


def test_config_overrides_tags(aws_region: Region, tmp_path: Path, agent_env, unique: str) -> None:
    iid = launch(aws_region, {}, unique)
    agent_env(aws_region, iid)
    cfg = cfg_for(tmp_path, "cluster:\n  name: red\nidentity:\n  role: control-plane\n")
    ident = read_identity(ImdsClient(aws_region.instance(iid).imds_url), cfg)
    assert (ident.cluster, ident.role) == ("red", "control-plane")


def test_token_is_cached_and_renewed_after_expiry(aws_region: Region, unique: str) -> None:
    region = aws_region
    iid = launch(region, {"herd:cluster": "blue", "herd:role": "node"}, unique)
    now = [0.0]
    imds = ImdsClient(region.instance(iid).imds_url, token_ttl_s=60, clock=lambda: now[0])
    assert imds.get("/latest/meta-data/instance-id") == iid
    assert imds.get("/latest/meta-data/local-ipv4") == region.instance(iid).private_ip
    assert imds.token_fetches == 1
    now[0] = 31.0  # past half the TTL: renewed before it expires
    imds.get("/latest/meta-data/instance-id")
    assert imds.token_fetches == 2


def test_server_errors_are_retried_then_reported(aws_region: Region, unique: str) -> None:
    from herd_sandbox.aws.imds import Fault

    iid = launch(aws_region, {"herd:cluster": "blue", "herd:role": "node"}, unique)
    imds = ImdsClient(aws_region.instance(iid).imds_url, attempts=3, backoff_max_s=0.01)
    aws_region.inject_imds_fault(iid, Fault(path="/latest/meta-data/instance-id", status=500, remaining=2))
    assert imds.get("/latest/meta-data/instance-id") == iid  # two 500s, then success
    aws_region.inject_imds_fault(iid, Fault(path="/latest/meta-data/instance-id", status=500, remaining=10))
    with pytest.raises(ImdsError, match="after 3 tries"):
        imds.get("/latest/meta-data/instance-id")
    assert imds.get("/latest/meta-data/no-such-path", optional=True) is None
