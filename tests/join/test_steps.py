"""The join's steps over a JoinContext made of fakes: a strict runner, Stubber-wrapped AWS
clients, fixed control-plane addresses and a health check override (no network, no AWS)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from herd_agent.config import load_config
from herd_agent.discovery.identity import Identity
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.join import steps
from herd_agent.join.context import Clients, JoinContext
from herd_agent.join.state import JoinState, load_state
from tests.fakes import FakeRunner

WORKER = Identity("i-0000000000000w001", "us-east-1", "us-east-1a", "10.0.1.9", "m6i.large", None, "blue", "node")


def context(tmp_path: Path, *, ssm=None, runner=None, healthy=lambda c: True, state: JoinState | None = None,
            config: str = "discovery:\n  addresses: [10.0.0.1, 10.0.0.2]\n  attempts: 1\n") -> JoinContext:
    root = HostRoot(tmp_path)
    root.write("/etc/herd-agent/config.yaml", config, mode=0o644)
    root.write("/etc/hosts", "127.0.0.1 localhost\n", mode=0o644)
    # Every client is given, stubbed: a call with nothing queued for it fails.
    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    Stubber(ec2).activate()
    if ssm is None:
        ssm = stubbed_ssm()
        Stubber(ssm).activate()
    given = {"ec2": ec2, "ssm": ssm}
    return JoinContext(ident=WORKER, cfg=load_config(root), root=root,
                       state=state or JoinState(WORKER.instance_id, "blue", "node"),
                       clients=Clients("us-east-1", given), runner=runner or FakeRunner(),
                       notifier=Notifier(send=lambda s: True), check=healthy)


def stubbed_ssm():
    return boto3.client("ssm", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_the_sequence_is_listed_in_one_place() -> None:
    assert [s.name for s in steps.CONFIG_STEPS] == ["discovery", "hosts", "kernel", "token", "etcd", "k3s-config",
                                                    "k3s-start"]
    assert [s.name for s in steps.READY_STEPS] == ["wait-ready", "publish-tokens", "launch-hook"]


def test_a_worker_reads_and_writes_only_the_agent_token(tmp_path: Path) -> None:
    ssm = stubbed_ssm()
    agent = "K10" + "cd" * 32 + "::node:agentpw"
    ctx = context(tmp_path, ssm=ssm)
    with Stubber(ssm) as stub:
        # Exactly one read, of the agent token; a read of the server token would find nothing queued.
        stub.add_response("get_parameter", {"Parameter": {"Name": "/herd/blue/k3s-agent-token", "Value": agent,
                                                          "Type": "SecureString"}},
                          {"Name": "/herd/blue/k3s-agent-token", "WithDecryption": True})
        steps.Discover().run(ctx)
        steps.Tokens().run(ctx)
        stub.assert_no_pending_responses()
    assert ctx.state.endpoint_ip == "10.0.0.1" and not ctx.state.founder
    assert ctx.root.read_text("/var/lib/herd-agent/token") == agent + "\n"
    assert not ctx.root.exists("/var/lib/herd-agent/agent-token")


def test_heal_moves_the_endpoint_and_restarts_k3s(tmp_path: Path) -> None:
    alive = {"10.0.0.2"}
    runner = FakeRunner().expect(["systemctl", "restart", "--no-block", "k3s-agent.service"])
    state = JoinState(WORKER.instance_id, "blue", "node", endpoint_ip="10.0.0.1")
    ssm = stubbed_ssm()
    ctx = context(tmp_path, ssm=ssm, runner=runner, healthy=lambda c: c.ip in alive, state=state)
    with Stubber(ssm) as stub:
        stub.add_response("get_parameter", {"Parameter": {"Name": "/herd/blue/k3s-agent-token", "Value": "x",
                                                          "Type": "SecureString"}})
        steps.WaitReady.heal(ctx)
    runner.assert_done()
    assert "10.0.0.2\tcontrol-plane.blue.internal" in ctx.root.read_text("/etc/hosts")
    saved = load_state(ctx.root)
    assert saved is not None and saved.endpoint_ip == "10.0.0.2"
    # While the current one answers: nothing changes, no command runs.
    steps.WaitReady.heal(ctx)
    runner.assert_done()


def test_a_founder_does_not_heal_to_another_control_plane(tmp_path: Path) -> None:
    state = JoinState(WORKER.instance_id, "blue", "node", founder=True, endpoint_ip="10.0.1.9")
    ctx = context(tmp_path, healthy=lambda c: False, state=state)
    steps.WaitReady.heal(ctx)  # a strict runner with nothing planned: any command would fail
    assert not ctx.root.exists("/var/lib/herd-agent/join.json")


def test_a_takeover_founder_replaces_the_tokens_once(tmp_path: Path) -> None:
    ssm = stubbed_ssm()
    state = JoinState(WORKER.instance_id, "blue", "control-plane", founder=True, founder_epoch=2,
                      endpoint_ip="10.0.1.9")
    ctx = context(tmp_path, ssm=ssm, state=state)
    ctx.ident = Identity(WORKER.instance_id, "us-east-1", "us-east-1a", "10.0.1.9", "m6i.large", None, "blue",
                         "control-plane")
    with Stubber(ssm) as stub:
        for name in ("/herd/blue/token", "/herd/blue/k3s-agent-token"):  # overwritten, not read first
            stub.add_response("put_parameter", {"Version": 2}, {"Name": name, "Value": ANY, "Type": "SecureString",
                                                                "Overwrite": True, "Description": ANY})
        steps.Tokens().run(ctx)
        stub.assert_no_pending_responses()
    first = ctx.root.read_text("/var/lib/herd-agent/token")
    # Resumed (its token file is there): the stored tokens are read back, nothing is overwritten.
    with Stubber(ssm) as stub:
        for name, value in (("/herd/blue/token", first.strip()), ("/herd/blue/k3s-agent-token", "agent-x")):
            stub.add_response("get_parameter", {"Parameter": {"Name": name, "Value": value, "Type": "SecureString"}},
                              {"Name": name, "WithDecryption": True})
        steps.Tokens().run(ctx)
        stub.assert_no_pending_responses()
    assert ctx.root.read_text("/var/lib/herd-agent/token") == first


CONTROL_PLANE = Identity("i-0000000000000c004", "us-east-1", "us-east-1a", "10.0.0.9", "m6i.large", None, "blue",
                         "control-plane")


def external_etcd_context(tmp_path: Path) -> JoinContext:
    from herd_agent.discovery.control_plane import Candidate, Endpoint

    ctx = context(tmp_path, config="discovery:\n  addresses: [10.0.0.1, 10.0.0.2, 10.0.0.3]\n  attempts: 1\n"
                                   "etcd:\n  mode: external\n")
    ctx.ident = CONTROL_PLANE
    ctx.state = JoinState(CONTROL_PLANE.instance_id, "blue", "control-plane", endpoint_ip="10.0.0.1")
    ctx.endpoint = Endpoint(Candidate("10.0.0.1"), [], None)  # discovery chose 10.0.0.1
    for service in ("secretsmanager", "autoscaling"):
        ctx.clients.given[service] = boto3.client(service, region_name="us-east-1", aws_access_key_id="x",
                                                  aws_secret_access_key="x")
    return ctx


def test_an_etcd_join_moves_on_when_the_control_plane_it_came_through_stops_answering(
        tmp_path: Path, monkeypatch) -> None:
    """A replacement control plane discovered the one it replaces (its k3s still answered), whose
    etcd then stopped before the join reached it: the join goes through another healthy control
    plane (seen once under load in the lifecycle scenario: exit 69, "no etcd endpoint answered")."""
    from herd_agent.etcd import membership
    from herd_agent.etcd.errors import EtcdUnreachable

    through: list[list[str]] = []
    gone = {"10.0.0.1"}

    class Leaving(membership.Membership):
        def join(self, peers, oracle=None):  # type: ignore[no-untyped-def]
            through.append(list(peers))
            if any(f"//{ip}:" in p for ip in gone for p in peers):
                raise EtcdUnreachable(f"no etcd endpoint answered: {peers[0]} refused")
            return None

    monkeypatch.setattr(membership, "Membership", Leaving)
    ctx = external_etcd_context(tmp_path)
    checked: list[str] = []
    ctx.check = lambda c: checked.append(c.ip) or True  # every k3s answers /ping
    steps.Etcd().run(ctx)
    assert [p[0].split("//")[1].split(":")[0] for p in through] == ["10.0.0.1", "10.0.0.2"]
    assert "10.0.0.1" not in checked  # the one that stopped answering is not chosen again

    # When no control plane's etcd answers, the join gives up after ETCD_PEER_TRIES of them.
    through.clear()
    gone.update({"10.0.0.2", "10.0.0.3"})
    ctx = external_etcd_context(tmp_path / "again")
    ctx.check = lambda c: True
    with pytest.raises(EtcdUnreachable):
        steps.Etcd().run(ctx)
    assert len(through) == steps.ETCD_PEER_TRIES == 3
