"""Join, found and leave on real etcd 3.5 clusters on loopback (see harness.py)."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import pytest

from herd_agent.errors import CommandError
from herd_agent.etcd.errors import MembershipError, QuorumRefused
from tests.etcd.harness import healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess

_records: list[logging.LogRecord] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _records.append(record)


@pytest.fixture(autouse=True)
def _collect_logs():
    handler = _Collect(logging.INFO)
    logger = logging.getLogger("herd_agent.etcd")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    _records.clear()
    yield
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_found_three_member_cluster(lab):
    a, b, c = lab.three()
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="three healthy voters")
    st = lab.status()
    assert st.margin == 1
    assert all(["systemctl", "start", "herd-etcd.service"] in i.runner.calls for i in (a, b, c))
    env = c.root.read_text("/etc/herd-agent/etcd.env")
    assert "ETCD_INITIAL_CLUSTER_STATE=existing" in env
    assert f"{a.name}={a.membership.peer_url}" in env and f"{b.name}={b.membership.peer_url}" in env


def _etcd_log(inst) -> str:
    p = inst.root.path("/var/log/herd-sandbox/herd-etcd.service.log")
    return p.read_text(errors="replace") if p.exists() else ""


def test_two_members_join_at_once(lab):
    a = lab.found()
    b, c = lab.launch(), lab.launch()
    peers = [a.client_url]
    errors: list[BaseException] = []

    def run(inst):
        try:
            inst.membership.join(peers, oracle=lab.oracle())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in (b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="three healthy voters")
    for inst in (a, b, c):
        assert "member count is unequal" not in _etcd_log(inst)
    # The lock serialised the two changes: the second waited for the first.
    assert any("is held by" in r.getMessage() for r in _records)


def test_a_join_goes_on_when_the_peer_it_came_through_leaves(lab):
    """The replacement reached the cluster through one control plane, which leaves while the joiner
    waits for the membership lock (seen in the lifecycle scenario: the leaving control plane held
    the lock, then its etcd stopped). The join goes on through the other voters."""
    a, b, c = lab.three()
    d = lab.launch()
    other = lab.client(exclude=a)
    held = b.membership.lock(other).acquire()  # a's leave in progress: it holds the lock
    errors: list[BaseException] = []

    def run() -> None:
        try:
            d.membership.join([a.client_url], oracle=lab.oracle())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    joiner = threading.Thread(target=run)
    joiner.start()
    wait_for(lambda: any("is held by" in r.getMessage() for r in _records), what="the joiner waits for the lock")
    [gone] = [m for m in other.member_list()[1] if m.name == a.name]
    other.member_remove(gone.id)  # a's leave: member removed, then its etcd stops
    lab.kill9(a)
    a.alive = False
    held.release()
    joiner.join(timeout=120)
    assert not errors, errors
    wait_for(lambda: healthy_voters_equal(lab, [b, c, d]), what="b, c and the replacement are the voters")


def test_restart_with_intact_data_dir_keeps_member(lab):
    a, b, c = lab.three()
    before = {m.name: m.id for m in lab.members()}
    lab.kill9(c)
    result = c.membership.join([a.client_url, b.client_url])
    assert result.reused and result.member_id == before[c.name]
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="c back as the same member")


def test_rejoin_after_wiped_data_dir(lab):
    a, b, c = lab.three()
    old_id = {m.name: m.id for m in lab.members()}[c.name]
    lab.kill9(c)
    shutil.rmtree(c.root.path("/var/lib/etcd"))
    result = c.membership.join([a.client_url, b.client_url], oracle=lab.oracle())
    assert not result.reused and result.member_id != old_id and old_id in result.removed
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="c rejoined as a new member")
    journal = json.loads(c.root.read_text("/var/lib/etcd.identity.json"))
    assert journal["member_id"] == str(result.member_id) and journal["state"] == "member"


def test_ip_reuse_replaces_dead_member(lab):
    a, b, c = lab.three()
    dead_id = {m.name: m.id for m in lab.members()}[c.name]
    lab.kill9(c)
    lab.terminate(c)
    d = lab.launch(ip=c.ip)  # EC2 hands the dead instance's address to a new one
    result = d.membership.join([a.client_url, b.client_url], oracle=lab.oracle())
    assert dead_id in result.removed
    wait_for(lambda: healthy_voters_equal(lab, [a, b, d]), what="d replaced c")
    assert all(m.id != dead_id for m in lab.members())


def test_leader_leaves(lab):
    a, b, c = lab.three()
    st = lab.status()
    leader = next(i for i in (a, b, c) if i.name == {m.id: m.name for m in st.members}[st.leader])
    rest = [i for i in (a, b, c) if i is not leader]
    result = leader.membership.leave([i.client_url for i in (a, b, c)])
    assert result.removed and result.leadership_to in {m.id for m in st.members if m.name != leader.name}
    assert result.verdict is not None and result.verdict.ok
    leader.alive = False
    wait_for(lambda: healthy_voters_equal(lab, rest), what="two voters left with a leader")
    assert lab.status().leader == result.leadership_to
    assert not leader.systemctl().is_active("herd-etcd.service")
    assert not leader.root.exists("/var/lib/etcd")
    assert any(p.name.startswith("etcd.rotated-") for p in leader.root.path("/var/lib").iterdir())


def test_leave_refused_when_quorum_would_break(lab):
    a, b, c = lab.three()
    lab.kill9(c)
    with pytest.raises(QuorumRefused, match="only 1 healthy voter"):
        a.membership.leave([a.client_url, b.client_url])
    assert {m.name for m in lab.members()} == {a.name, b.name, c.name}
    assert a.systemctl().is_active("herd-etcd.service")


def test_embedded_leave_removes_member_when_k3s_does_not(fast_lab):
    lab = fast_lab
    a, b, c = lab.three()
    deleted = []
    result = c.membership.leave_embedded([a.client_url, b.client_url, c.client_url],
                                         delete_node=lambda: deleted.append(c.name))
    assert deleted == [c.name] and result.removed
    c.alive = False
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="c removed by the fallback")


def test_embedded_leave_trusts_k3s_removal(fast_lab):
    lab = fast_lab
    a, b, c = lab.three()
    c_id = {m.name: m.id for m in lab.members()}[c.name]
    client = lab.client(exclude=c)

    def k3s_deletes_node():  # k3s' etcd finalizer removes the member when the Node goes
        client.member_remove(c_id)

    result = c.membership.leave_embedded([a.client_url, b.client_url], delete_node=k3s_deletes_node)
    assert result.removed and result.verdict is None  # no direct removal was needed
    c.alive = False
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="c removed by k3s")


def test_failed_start_removes_our_learner_so_the_next_join_works(lab):
    a = lab.found()
    b = lab.launch()
    good_path = b.runner.env["PATH"]
    b.runner.env["PATH"] = str(lab.bindir)  # only the shim, no etcd binary: systemctl start fails
    with pytest.raises(CommandError, match="etcd: not found"):
        b.membership.join([a.client_url])
    assert [m.name for m in lab.members()] == [a.name]  # no learner left to block other joiners
    b.runner.env["PATH"] = good_path
    b.membership.join([a.client_url])
    wait_for(lambda: healthy_voters_equal(lab, [a, b]), what="b joined on the second try")


def test_refuses_to_remove_a_live_member_that_carries_our_name(lab):
    a = lab.found()
    b = lab.join()
    twin = lab.launch()
    twin.membership.identity = type(twin.membership.identity)(b.name, twin.ip)  # misconfigured: b's name
    with pytest.raises(MembershipError, match="is alive; refusing to remove it"):
        twin.membership.join([a.client_url])
    assert {m.name for m in lab.members()} == {a.name, b.name}
