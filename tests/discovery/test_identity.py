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
    # the longest TTL IMDS grants (6 h): the region scales token lifetimes by its clock factor, so
    # a short one could really expire between two requests on a loaded machine
    imds = ImdsClient(region.instance(iid).imds_url, token_ttl_s=21600, clock=lambda: now[0])
    assert imds.get("/latest/meta-data/instance-id") == iid
    assert imds.get("/latest/meta-data/local-ipv4") == region.instance(iid).private_ip
    assert imds.token_fetches == 1
    now[0] = 19441.0  # inside the last tenth of the TTL on the agent's clock: renewed before it expires
    imds.get("/latest/meta-data/instance-id")
    assert imds.token_fetches == 2


def test_token_lifetime_follows_the_time_factor(aws_region: Region, unique: str, monkeypatch) -> None:
    """With ``HERD_AGENT_TIME_FACTOR`` the agent counts a token's life as the region does (the
    region serves a 6 h token for 216 s at factor 0.01): renewed inside its last tenth, not after."""
    region = aws_region
    assert region.time_factor == 0.01
    monkeypatch.setenv("HERD_AGENT_TIME_FACTOR", "0.01")
    iid = launch(region, {"herd:cluster": "blue", "herd:role": "node"}, unique)
    now = [0.0]
    imds = ImdsClient(region.instance(iid).imds_url, token_ttl_s=21600, clock=lambda: now[0])
    imds.get("/latest/meta-data/instance-id")
    now[0] = 190.0  # before the last tenth of 216 s
    imds.get("/latest/meta-data/instance-id")
    assert imds.token_fetches == 1
    now[0] = 195.0  # inside it
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


# --- bad identity from IMDS (issue 12): validated before use ----------------------------------
@pytest.mark.parametrize(("field", "value", "shown"), [
    ("instanceId", "i-12345678; reboot", "a malformed instanceId"),
    ("privateIp", "127.0.77.50 evil.example.com", "a malformed privateIp"),
    ("local-hostname", "ip-10-0-0-1\nevil.example.com", "a malformed local-hostname"),
    ("region", "us-east-1\nus-west-2", "a malformed region"),
    ("availabilityZone", "eu-west-1a", "a malformed availabilityZone"),
])
def test_malformed_identity_fields_are_refused(aws_region: Region, tmp_path: Path, unique: str,
                                               field: str, value: str, shown: str | None) -> None:
    from herd_agent.discovery.identity import IdentityError

    iid = launch(aws_region, {"herd:cluster": "blue", "herd:role": "node"}, unique)
    name = {"instanceId": "instance_id", "privateIp": "private_ip", "local-hostname": "local_hostname",
            "region": "region", "availabilityZone": "availability_zone"}[field]
    aws_region.instance(iid).imds.override_identity(**{name: value})
    with pytest.raises(IdentityError) as exc:
        read_identity(ImdsClient(aws_region.instance(iid).imds_url), cfg_for(tmp_path))
    assert exc.value.field == field and exc.value.exit_code == ExitCode.DATA
    assert f"a malformed {field}" in str(exc.value) and (shown is None or shown in str(exc.value))


@pytest.mark.parametrize("value", ["127.0.77.50", "10.1.2.3", "fd00::7", "2001:db8::1"])
def test_any_single_ip_address_is_accepted(value: str) -> None:
    from herd_agent.discovery.identity import valid_ip

    assert valid_ip(value) == value


@pytest.mark.parametrize("value", ["ip-10-0-0-1.ec2.internal", "ip-10-0-0-1", "host.example.com.", ""])
def test_rfc1123_hostnames_are_accepted(value: str) -> None:
    from herd_agent.discovery.identity import valid_hostname

    assert valid_hostname(value) == value


@pytest.mark.parametrize("value", ["a b", "a\tb", "-a.example.com", "a..b", "a_b.example.com", "x" * 64])
def test_non_rfc1123_hostnames_are_refused(value: str) -> None:
    from herd_agent.discovery.identity import IdentityError, valid_hostname

    with pytest.raises(IdentityError, match="local-hostname"):
        valid_hostname(value)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


@pytest.mark.allow_subprocess
@pytest.mark.parametrize(("overrides", "field"), [
    ({"local_hostname": "ip-10-0-0-1\nevil", "private_ip": "127.0.77.50 evil.example.com"}, "privateIp"),
    ({"local_hostname": "ip-10-0-0-1\nevil"}, "local-hostname"),
])
def test_join_with_a_bad_identity_exits_65_and_writes_nothing(aws_region: Region, tmp_path: Path, unique: str,
                                                              overrides: dict[str, str], field: str) -> None:
    """issue 12: the node name and node-ip were written into the k3s config and /etc/hosts, the
    unit started and the token written; now ``herd-agent join`` stops at the identity."""
    from herd_sandbox.instance import SandboxInstance

    iid = launch(aws_region, {"herd:cluster": "blue", "herd:role": "node"}, unique)
    aws_region.instance(iid).imds.override_identity(**overrides)  # before the agent boots
    inst = SandboxInstance(iid, tmp_path / iid, aws_region.env(iid)).prepare()
    inst.write_config("discovery:\n  attempts: 1\n")
    before = snapshot(inst.root_dir)
    r = inst.agent("join", timeout=120)
    assert r.returncode == 65, r.stderr[-2000:]
    assert f"malformed {field}" in r.stderr
    assert snapshot(inst.root_dir) == before  # no /etc/hosts change, no k3s config, no token, no unit
    assert not [c for c in aws_region.calls(caller=iid) if c.action != "DescribeTags"]
