"""Join tokens and founder claims against the sandbox's SSM and Secrets Manager (and Stubber)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from herd_agent import aws
from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode
from herd_agent.host.fsroot import HostRoot
from herd_agent.join import token
from herd_agent.join.founder import Claim, FounderClaims, SupersededError
from herd_agent.k3s.tokens import parse
from herd_sandbox.aws.region import Region

SECURE = "K10" + "ab" * 32 + "::server:0123456789abcdef"


@pytest.fixture
def operator_env(region: Region, monkeypatch: pytest.MonkeyPatch):
    for k, v in region.env().items():
        monkeypatch.setenv(k, v)
    aws.reset_clients()
    yield
    aws.reset_clients()


def cfg(tmp_path: Path, text: str = ""):
    if text:
        (tmp_path / "etc/herd-agent").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/herd-agent/config.yaml").write_text(text)
    return load_config(HostRoot(tmp_path))


def ident(cluster: str, n: int = 1, asg: str | None = None, iid: str | None = None) -> Identity:
    return Identity(iid or f"i-{n:017x}", "us-east-1", "us-east-1a", f"127.0.3.{n}", "m6i.large", asg, cluster,
                    "control-plane", {})


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
@pytest.mark.parametrize(("kind", "key", "default"), [("server", "token.server_name", "/herd/{c}/token"),
                                                       ("agent", "token.agent_name", "/herd/{c}/k3s-agent-token")])
def test_missing_token_names_parameter_and_action(tmp_path: Path, operator_env, source: str, kind: str, key: str,
                                                  default: str) -> None:
    c = cfg(tmp_path, f"token:\n  source: {source}\n")
    cluster = f"nothere-{source}-{kind}"
    with pytest.raises(token.MissingTokenError) as exc:
        token.TokenStore(c, ident(cluster)).require(kind)
    msg = str(exc.value)
    assert default.format(c=cluster) in msg and key in msg
    assert ("ssm:GetParameter" if source == "ssm" else "secretsmanager:GetSecretValue") in msg
    assert exc.value.exit_code == ExitCode.NO_INPUT == 66


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
def test_founder_creates_each_token_once_in_its_own_parameter(tmp_path: Path, operator_env, source: str) -> None:
    c = cfg(tmp_path, f"token:\n  source: {source}\n")
    store = token.TokenStore(c, ident(f"tok-{source}"))
    results: dict[str, list[str]] = {"server": [], "agent": []}
    threads = [threading.Thread(target=lambda k=k: results[k].append(store.create(k)))
               for k in ("server", "agent") for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server, agent = set(results["server"]), set(results["agent"])
    assert len(server) == 1 and len(agent) == 1 and server != agent  # two tokens, one each
    assert store.require("server") in server and store.require("agent") in agent
    assert store.name("server") != store.name("agent")
    root = HostRoot(tmp_path)
    assert token.write_file(root, next(iter(agent))) is True
    assert (tmp_path / "var/lib/herd-agent/token").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
def test_publish_replaces_the_short_token_with_the_secure_one(tmp_path: Path, operator_env, source: str) -> None:
    c = cfg(tmp_path, f"token:\n  source: {source}\n")
    store = token.TokenStore(c, ident(f"pub-{source}"))
    store.create("server")
    with pytest.raises(ValueError, match="short"):
        store.publish("server", "not-secure")
    assert store.publish("server", SECURE) is True
    assert store.publish("server", SECURE) is False  # idempotent: no write when it holds already
    got = store.read("server")
    assert got is not None and got.secure and got.ca_hash == "ab" * 32
    # A takeover founder replaces the failed founder's tokens.
    fresh = store.create("server", replace=True)
    assert fresh != SECURE and not parse(fresh).secure and store.require("server") == fresh


def test_server_name_overrides_the_legacy_name(tmp_path: Path) -> None:
    c = cfg(tmp_path, "token:\n  server_name: /x/{cluster}/srv\n  agent_name: /x/{cluster}/agt\n")
    store = token.TokenStore(c, ident("blue"))
    assert (store.name("server"), store.name("agent")) == ("/x/blue/srv", "/x/blue/agt")
    assert token.TokenStore(cfg(tmp_path / "d"), ident("blue")).name("server") == "/herd/blue/token"


def test_exactly_one_founder_among_five(tmp_path: Path, operator_env) -> None:
    c = cfg(tmp_path)
    won: list[Claim] = []
    barrier = threading.Barrier(5)

    def contend(n: int) -> None:
        barrier.wait()
        claim = FounderClaims(c, ident("race", n)).claim()
        if claim is not None:
            won.append(claim)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and won[0].epoch == 1
    latest = FounderClaims(c, ident("race")).founder_of()
    assert latest is not None and latest.instance_id == won[0].instance_id and latest.epoch == 1


def _instances(region: Region, name: str, n: int) -> list[str]:
    region.create_launch_template(f"{name}-lt")
    region.create_group(name, f"{name}-lt", desired=n)
    return region.group_instances(name)


def test_live_founder_blocks_a_stale_one_is_taken_over_and_fenced(region: Region, tmp_path: Path,
                                                                    operator_env) -> None:
    c = cfg(tmp_path)
    a, b, other = _instances(region, "fnd", 3)
    first = FounderClaims(c, ident("fnd", 1, iid=a)).claim()
    assert first is not None and first.epoch == 1
    # While its instance runs, the claim is live: nobody else founds.
    assert FounderClaims(c, ident("fnd", 2, iid=b)).claim() is None
    # The founder's instance goes away: the claim is stale; exactly the next epoch is taken.
    region.terminate_instance(a)
    region.wait_for(lambda: region.ec2_state(a) in ("shutting-down", "terminated"), timeout=30, what="gone")
    second = FounderClaims(c, ident("fnd", 2, iid=b)).claim()
    assert second is not None and second.epoch == 2
    assert FounderClaims(c, ident("fnd", 3, iid=other)).claim() is None  # epoch 2 is live
    # Fencing: the superseded founder may not go on.
    with pytest.raises(SupersededError) as exc:
        FounderClaims(c, ident("fnd", 1, iid=a)).still_current(1)
    assert exc.value.exit_code == ExitCode.SUPERSEDED == 83
    FounderClaims(c, ident("fnd", 2, iid=b)).still_current(2)
    # A released claim is stale at once; a resumed founder finds its own claim.
    FounderClaims(c, ident("fnd", 2, iid=b)).release(2)
    third = FounderClaims(c, ident("fnd", 3, iid=other)).claim()
    assert third is not None and third.epoch == 3
    assert FounderClaims(c, ident("fnd", 3, iid=other)).claim() == third


def test_a_claim_whose_cluster_never_came_up_goes_stale_by_age(region: Region, tmp_path: Path, operator_env) -> None:
    c = cfg(tmp_path, "founder:\n  stale_after_s: 600\njoin:\n  ready_timeout_s: 600\n")
    (a,) = _instances(region, "age", 1)
    t0 = time.time()
    claims = FounderClaims(c, ident("age", 1, iid=a), clock=lambda: t0)
    claim = claims.claim()
    assert claim is not None and claim.time == t0
    assert claims.stale(claim) is None
    later = FounderClaims(c, ident("age", 2), clock=lambda: t0 + 659)
    assert later.stale(claim) is None  # the limit is max(stale_after_s, ready_timeout_s + 60) = 660 s
    later = FounderClaims(c, ident("age", 2), clock=lambda: t0 + 661)
    assert "never came up" in (later.stale(claim) or "")


def test_stale_reads_the_auto_scaling_state_with_a_stubbed_client(tmp_path: Path) -> None:
    import boto3
    from botocore.stub import Stubber

    c = cfg(tmp_path)
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    asg = boto3.client("autoscaling", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    ssm = boto3.client("ssm", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    claims = FounderClaims(c, ident("stub"), ssm=ssm, ec2=ec2, autoscaling=asg)
    claim = Claim(1, "i-0000000000000abcd", "10.0.0.1", time.time())
    with Stubber(ec2) as e, Stubber(asg) as g:
        e.add_response("describe_instances", {"Reservations": [{"Instances": [
            {"InstanceId": claim.instance_id, "State": {"Name": "running", "Code": 16}}]}]},
            {"InstanceIds": [claim.instance_id]})
        g.add_response("describe_auto_scaling_instances", {"AutoScalingInstances": [
            {"InstanceId": claim.instance_id, "AutoScalingGroupName": "g", "AvailabilityZone": "us-east-1a",
             "LifecycleState": "Terminating:Wait", "HealthStatus": "HEALTHY", "ProtectedFromScaleIn": False}]},
            {"InstanceIds": [claim.instance_id]})
        assert "Terminating:Wait" in (claims.stale(claim) or "")
        # "Not found" decides nothing (EC2 is eventually consistent about a just-launched
        # instance): a fresh claim stays live; an old one falls to the age rule.
        e.add_client_error("describe_instances", "InvalidInstanceID.NotFound")
        g.add_response("describe_auto_scaling_instances", {"AutoScalingInstances": []},
                       {"InstanceIds": [claim.instance_id]})
        assert claims.stale(claim) is None
        old = Claim(1, claim.instance_id, claim.ip, time.time() - 86400)
        e.add_client_error("describe_instances", "InvalidInstanceID.NotFound")
        g.add_response("describe_auto_scaling_instances", {"AutoScalingInstances": []},
                       {"InstanceIds": [claim.instance_id]})
        assert "never came up" in (claims.stale(old) or "")
