"""Join token and founder decision against the sandbox's SSM and Secrets Manager."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from herd_agent import aws
from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode
from herd_agent.host.fsroot import HostRoot
from herd_agent.join import founder, token
from herd_sandbox.aws.region import Region


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


def ident(cluster: str, n: int = 1, asg: str | None = None, tags: dict | None = None) -> Identity:
    return Identity(f"i-{n:017x}", "us-east-1", "us-east-1a", f"127.0.3.{n}", "m6i.large", asg, cluster,
                    "control-plane", tags or {})


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
def test_missing_token_names_parameter_and_action(tmp_path: Path, operator_env, source: str) -> None:
    c = cfg(tmp_path, f"token:\n  source: {source}\n")
    with pytest.raises(token.MissingTokenError) as exc:
        token.require(c, ident(f"nothere-{source}"))
    msg = str(exc.value)
    assert f"/herd/nothere-{source}/token" in msg
    assert ("ssm:GetParameter" if source == "ssm" else "secretsmanager:GetSecretValue") in msg
    assert exc.value.exit_code == ExitCode.NO_INPUT == 66


@pytest.mark.parametrize("source", ["ssm", "secretsmanager"])
def test_founder_creates_token_once_and_joiners_read_it(tmp_path: Path, operator_env, source: str) -> None:
    c = cfg(tmp_path, f"token:\n  source: {source}\n")
    me = ident(f"tok-{source}")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(token.create(c, me))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results[0]) == 64
    assert token.require(c, me) == results[0]
    root = HostRoot(tmp_path)
    assert token.write_file(root, results[0]) is True
    assert (tmp_path / "var/lib/herd-agent/token").stat().st_mode & 0o777 == 0o600


def test_exactly_one_founder_among_five(tmp_path: Path, operator_env) -> None:
    c = cfg(tmp_path)
    won: list[int] = []
    barrier = threading.Barrier(5)

    def contend(n: int) -> None:
        barrier.wait()
        if founder.claim(c, ident("race", n), "inc-1"):
            won.append(n)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    record = founder.founder_of(c, ident("race"), "inc-1")
    assert record is not None and record["instance_id"] == f"i-{won[0]:017x}"
    # A new incarnation of the same cluster name is not blocked by the old record.
    assert founder.claim(c, ident("race", 9), "inc-2") is True


def test_incarnation_from_the_asg_arn_changes_when_the_group_is_recreated(
    region: Region, tmp_path: Path, operator_env
) -> None:
    region.create_launch_template("inc-lt")
    region.create_group("inc-cp", "inc-lt", desired=0)
    first = founder.incarnation(cfg(tmp_path), ident("inc", asg="inc-cp"))
    region.client("autoscaling").delete_auto_scaling_group(AutoScalingGroupName="inc-cp", ForceDelete=True)
    region.create_group("inc-cp", "inc-lt", desired=0)
    second = founder.incarnation(cfg(tmp_path), ident("inc", asg="inc-cp"))
    assert first and second and first != second


def test_incarnation_from_a_tag(tmp_path: Path) -> None:
    c = cfg(tmp_path, "founder:\n  incarnation_tag: aws:cloudformation:stack-id\n")
    arn = "arn:aws:cloudformation:us-east-1:123456789012:stack/blue/5b8c7a10-0000-11ef-9c11-0a1b2c3d4e5f"
    assert founder.incarnation(c, ident("x", tags={"aws:cloudformation:stack-id": arn})) == \
        "5b8c7a10-0000-11ef-9c11-0a1b2c3d4e5f"
    with pytest.raises(Exception, match="not on this instance"):
        founder.incarnation(c, ident("x"))
