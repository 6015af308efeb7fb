"""Stale-member cleanup on real etcd with moto EC2 as cloud truth."""

from __future__ import annotations

import pytest

from herd_agent.etcd.gc import CloudTruthUnavailable, gc_once
from tests.etcd.harness import healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess


@pytest.fixture
def lab(fast_lab):
    return fast_lab  # the agent's guards alone (see conftest.fast_lab)

STATE = "/var/lib/herd-agent/etcd-gc.json"


def _gc(lab, inst, **kw):
    return gc_once(lab.client(exclude=None), lab.oracle(), inst.root, state_file=STATE,
                   stale_grace_s=lab.settings.stale_grace_s, unstarted_grace_s=lab.settings.unstarted_grace_s,
                   clock=lab.now, **kw)


def test_killed_member_removed_only_after_instance_terminated_and_grace(lab):
    a, b, c = lab.three()
    lab.kill9(c)
    c.alive = False

    # etcd sees c down, but its instance still runs: not stale, however long we wait.
    lab.advance(10 * lab.settings.stale_grace_s)
    result = _gc(lab, a)
    assert result.removed is None and result.candidates == []

    lab.terminate(c)
    result = _gc(lab, a)
    assert result.removed is None
    assert [(x.member.name, x.reason, x.ripe) for x in result.candidates] == [(c.name, "gone", False)]
    assert "terminated" in result.candidates[0].evidence

    lab.advance(lab.settings.stale_grace_s - 1)
    assert _gc(lab, a).removed is None  # still inside the grace period

    lab.advance(2)
    result = _gc(lab, a)
    assert result.removed is not None and result.removed.member.name == c.name
    assert result.removed_verdict.ok
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="c removed")


def test_refuses_to_remove_healthy_member_when_another_is_down(lab):
    a, b, c = lab.three()
    lab.kill9(c)  # c is down, its instance alive
    lab.terminate(b)  # the cloud says b is gone, but b's etcd is healthy
    _gc(lab, a)
    lab.advance(lab.settings.stale_grace_s + 1)
    result = _gc(lab, a)
    assert result.removed is None
    [(cand, verdict)] = result.refused
    assert cand.member.name == b.name and not verdict.ok
    assert "only 1 healthy voter" in verdict.reason
    assert {m.name for m in lab.client(exclude=c).member_list()[1]} == {a.name, b.name, c.name}


def test_never_shrinks_two_member_cluster(lab):
    a = lab.found()
    b = lab.join()
    lab.terminate(b)
    lab.kill9(b)
    _gc(lab, a)
    lab.advance(lab.settings.stale_grace_s + 1)
    result = _gc(lab, a)
    assert result.removed is None
    assert "two-member" in result.refused[0][1].reason


def test_unstarted_member_removed_after_its_grace(lab):
    a, b, c = lab.three()
    ghost_ip = lab.next_ip()  # added by a joiner that died before starting etcd
    client = lab.client()
    ghost, _ = client.member_add([lab.settings.peer_url(ghost_ip)], learner=False)
    # its instance still runs: only the unstarted rule can make it stale
    lab.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=lab.subnet,
                          PrivateIpAddress=ghost_ip)
    first = _gc(lab, a)
    assert [(x.member.id, x.reason, x.ripe) for x in first.candidates] == [(ghost.id, "unstarted", False)]
    lab.advance(lab.settings.unstarted_grace_s + 1)
    result = _gc(lab, a)
    assert result.removed is not None and result.removed.member.id == ghost.id
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="ghost removed")


def test_dry_run_removes_nothing(lab):
    a, b, c = lab.three()
    lab.kill9(c)
    lab.terminate(c)
    _gc(lab, a)
    lab.advance(lab.settings.stale_grace_s + 1)
    result = _gc(lab, a, dry_run=True)
    assert result.removed is not None and result.removed.member.name == c.name
    assert {m.name for m in lab.client(exclude=c).member_list()[1]} == {a.name, b.name, c.name}


class _DownOracle:
    def describe(self, names, ips):
        raise ConnectionError("EC2 endpoint unreachable")


def test_cloud_outage_decides_nothing_and_does_not_block_joins(lab):
    a = lab.found()
    with pytest.raises(CloudTruthUnavailable, match="EC2 endpoint unreachable"):
        gc_once(lab.client(), _DownOracle(), a.root, state_file=STATE, stale_grace_s=1, unstarted_grace_s=1)
    b = lab.launch()
    b.membership.join([a.client_url], oracle=_DownOracle())  # the learner costs no vote: join anyway
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="b joined without cloud truth")


def test_ec2_oracle_answers_by_id_and_ip_including_terminated(lab):
    x, y = lab.launch(), lab.launch()
    lab.terminate(y)
    found = {i.instance_id: i for i in lab.oracle().describe([x.name, y.name, "not-an-id"], [x.ip])}
    assert found[x.name].state == "running" and found[x.name].private_ip == x.ip
    assert found[y.name].state == "terminated"


class _Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def describe(self, names, ips):
        self.calls += 1
        return self.inner.describe(names, ips)


def test_cloud_is_asked_only_on_evidence(lab):
    """An idle, healthy cluster whose members the cloud confirmed once costs no AWS call per pass;
    a member that stops answering brings the cloud back in (issue 12: idle AWS calls)."""
    a, b, c = lab.three()
    oracle = _Counting(lab.oracle())
    first = _gc(lab, a)  # a's state file is fresh: every member is unknown
    assert first.asked_cloud and any("not yet confirmed" in w for w in first.evidence)
    for _ in range(3):
        idle = gc_once(lab.client(), oracle, a.root, state_file=STATE, stale_grace_s=lab.settings.stale_grace_s,
                       unstarted_grace_s=lab.settings.unstarted_grace_s, clock=lab.now)
        assert not idle.asked_cloud and idle.evidence == [] and idle.candidates == []
    assert oracle.calls == 0
    lab.kill9(c)
    woke = gc_once(lab.client(exclude=c), oracle, a.root, state_file=STATE, stale_grace_s=lab.settings.stale_grace_s,
                   unstarted_grace_s=lab.settings.unstarted_grace_s, clock=lab.now)
    assert oracle.calls == 1 and woke.asked_cloud
    assert any(c.name in w and "does not answer" in w for w in woke.evidence)
