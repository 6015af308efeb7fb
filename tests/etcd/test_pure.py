"""Pure logic with plain values: quorum math, removal verdicts, stale decisions,
``--initial-cluster`` and env-file rendering, gateway error mapping. No processes, no network."""

from __future__ import annotations

import pytest

from herd_agent.etcd.client import Member, MemberStatus, gateway_prefix, member_id_hex, url_host
from herd_agent.etcd.errors import (
    EtcdError,
    LearnerNotInSync,
    MemberNotFound,
    TooManyLearners,
    UnhealthyCluster,
    error_from_body,
)
from herd_agent.etcd.gc import InstanceInfo, assess, instance_verdict, matches
from herd_agent.etcd.member import render_env
from herd_agent.etcd.quorum import (
    healthy_voters,
    leader_of,
    most_caught_up,
    quorum_margin,
    quorum_size,
    removal_verdict,
    render_initial_cluster,
)
from herd_agent.etcd.settings import EtcdSettings, Identity


def member(mid, name="", ip="10.0.0.1", learner=False, started=True):
    return Member(mid, name if started else "", (f"http://{ip}:2380",),
                  (f"http://{ip}:2379",) if started else (), learner)


def status(mid, leader=1, index=100, errors=()):
    return MemberStatus(mid, leader, index, 2, index, tuple(errors), False, "3.5.1")


@pytest.mark.parametrize(("voters", "quorum"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_quorum_size(voters, quorum):
    assert quorum_size(voters) == quorum


def test_quorum_margin():
    assert quorum_margin(3, 3) == 1
    assert quorum_margin(3, 2) == 0
    assert quorum_margin(3, 1) == -1
    assert quorum_margin(5, 5) == 2


def three(learner_id=None):
    ms = [member(1, "a", "10.0.0.1"), member(2, "b", "10.0.0.2"), member(3, "c", "10.0.0.3")]
    if learner_id:
        ms.append(member(learner_id, "l", "10.0.0.9", learner=True))
    return ms


def test_removing_dead_member_of_three_is_safe():
    v = removal_verdict(three(), {1, 2}, 3)
    assert v.ok and v.facts["healthy_left"] == 2 and v.facts["quorum_after"] == 2


def test_removing_healthy_member_when_another_is_down_is_refused():
    v = removal_verdict(three(), {1, 2}, 2)
    assert not v.ok and "only 1 healthy voter" in v.reason


def test_two_member_cluster_never_shrinks_automatically():
    ms = three()[:2]
    assert not removal_verdict(ms, {1}, 2).ok
    assert "two-member" in removal_verdict(ms, {1}, 2).reason
    assert removal_verdict(ms, {1, 2}, 2, allow_two_to_one=True).ok  # a healthy peer and self-leave
    assert not removal_verdict(ms, {2}, 2, allow_two_to_one=True).ok  # the one left is down


def test_last_voter_and_learners():
    assert not removal_verdict([member(1, "a")], {1}, 1, allow_two_to_one=True).ok
    v = removal_verdict(three(learner_id=9), set(), 9)
    assert v.ok and "learner" in v.reason
    assert removal_verdict(three(), {1, 2, 3}, 42).ok  # not a member: nothing to protect


def test_healthy_voters_excludes_silent_erroring_leaderless_lagging_and_learners():
    ms = three(learner_id=9) + [member(4, "d", "10.0.0.4"), member(5, "e", "10.0.0.5"), member(6, "", started=False)]
    statuses = {1: status(1, index=5000), 2: status(2, index=5000, errors=("NOSPACE",)), 3: None,
                4: status(4, leader=0, index=5000), 5: status(5, index=3000), 9: status(9, index=5000), 6: None}
    assert healthy_voters(ms, statuses) == {1}


def test_most_caught_up_and_leader():
    statuses = {1: status(1, index=10), 2: status(2, index=12), 3: status(3, index=12), 4: None}
    assert most_caught_up(statuses, [1, 2, 3, 4]) == 2  # ties go to the lowest ID
    assert most_caught_up(statuses, [4]) is None
    assert leader_of({1: status(1, leader=7), 2: status(2, leader=7), 3: status(3, leader=8)}) == 7
    assert leader_of({1: None}) == 0


def test_initial_cluster_lists_every_member_plus_self():
    ms = [member(1, "a", "10.0.0.1"), member(2, "b", "10.0.0.2"), member(0xABC, "", "10.0.0.7", started=False),
          Member(0x99, "", ("http://10.0.0.5:2380",), (), True)]  # our own just-added learner entry
    out = render_initial_cluster(ms, "me", "http://10.0.0.5:2380")
    assert out == ("a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,me=http://10.0.0.5:2380,"
                   "unstarted-abc=http://10.0.0.7:2380")
    assert len(out.split(",")) == len(ms)  # etcd: "member count is unequal" otherwise


def test_env_file_for_joiner():
    s = EtcdSettings(client_port=2379, peer_port=2380, extra_env={"ETCD_HEARTBEAT_INTERVAL": "20"})
    text = render_env(s, Identity("i-0abc", "10.0.1.5"), "a=http://10.0.0.1:2380,i-0abc=http://10.0.1.5:2380",
                      "existing")
    lines = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert lines["ETCD_NAME"] == "i-0abc"
    assert lines["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert lines["ETCD_INITIAL_CLUSTER"] == "a=http://10.0.0.1:2380,i-0abc=http://10.0.1.5:2380"
    assert lines["ETCD_LISTEN_CLIENT_URLS"] == "http://10.0.1.5:2379,http://127.0.0.1:2379"
    assert lines["ETCD_ADVERTISE_CLIENT_URLS"] == "http://10.0.1.5:2379"
    assert lines["ETCD_DATA_DIR"] == "/var/lib/etcd"
    assert lines["ETCD_HEARTBEAT_INTERVAL"] == "20"
    sandbox = render_env(s, Identity("i-0abc", "127.0.5.5"), "x", "new")  # many members share 127.0.0.1
    assert "ETCD_LISTEN_CLIENT_URLS=http://127.0.5.5:2379\n" in sandbox


# --- stale decisions ---

def inst(iid, ip, state="running", dns=""):
    return InstanceInfo(iid, ip, state, dns)


def test_matching_needs_name_and_ip():
    m = member(1, "i-0aaa11111111", "10.0.0.1")
    assert matches(m, inst("i-0aaa11111111", "10.0.0.1"))
    assert not matches(m, inst("i-0bbb22222222", "10.0.0.1"))  # IP reused by another instance
    assert not matches(m, inst("i-0aaa11111111", "10.0.0.2"))
    assert matches(member(1, "ip-10-0-0-1", "10.0.0.1"), inst("i-0ccc", "10.0.0.1", dns="ip-10-0-0-1.ec2.internal"))
    assert matches(member(1, started=False, ip="10.0.0.1"), inst("i-0ddd", "10.0.0.1"))
    # k3s' embedded etcd names members "<node name>-<8 hex>"
    assert matches(member(1, "i-0aaa11111111-3f2a1b9c", "10.0.0.1"), inst("i-0aaa11111111", "10.0.0.1"))
    assert matches(member(1, "ip-10-0-0-1-0123abcd", "10.0.0.1"),
                   inst("i-0ccc", "10.0.0.1", dns="ip-10-0-0-1.ec2.internal"))
    assert not matches(member(1, "i-0aaa11111111-xyz", "10.0.0.1"), inst("i-0aaa11111111", "10.0.0.1"))
    assert not matches(member(1, "i-0aaa111111112-3f2a1b9c", "10.0.0.1"), inst("i-0aaa11111111", "10.0.0.1"))


def test_instance_verdicts():
    m = member(1, "i-0aaa11111111", "10.0.0.1")
    assert instance_verdict(m, [inst("i-0aaa11111111", "10.0.0.1")]) == (
        False, "instance i-0aaa11111111 at 10.0.0.1 is running")
    assert instance_verdict(m, [inst("i-0aaa11111111", "10.0.0.1", "terminated")])[0]
    gone, why = instance_verdict(m, [inst("i-0new", "10.0.0.1")])
    assert gone and "no instance named i-0aaa11111111 at 10.0.0.1" in why
    assert not instance_verdict(m, [inst("i-0aaa11111111", "10.0.0.1", "stopped")])[0]


def test_assess_tracks_first_seen_and_grace():
    ms = [member(1, "i-01", "10.0.0.1"), member(2, "i-02", "10.0.0.2")]
    instances = [inst("i-01", "10.0.0.1"), inst("i-02", "10.0.0.2", "terminated")]
    seen, cands = assess(ms, instances, {}, 1000.0, stale_grace_s=300, unstarted_grace_s=600)
    assert seen == {"2": {"gone": 1000.0}}
    assert [(c.member.id, c.reason, c.ripe) for c in cands] == [(2, "gone", False)]
    seen, cands = assess(ms, instances, seen, 1299.0, stale_grace_s=300, unstarted_grace_s=600)
    assert not cands[0].ripe
    seen, cands = assess(ms, instances, seen, 1300.0, stale_grace_s=300, unstarted_grace_s=600)
    assert cands[0].ripe and cands[0].since == 1000.0
    # It came back: the clock restarts.
    seen, cands = assess(ms, [inst("i-02", "10.0.0.2")] + instances[:1], seen, 1400.0,
                         stale_grace_s=300, unstarted_grace_s=600)
    assert seen == {} and cands == []


def test_assess_unstarted_and_self():
    ghost = member(7, started=False, ip="10.0.0.7")
    me = member(1, "i-01", "10.0.0.1")
    seen, cands = assess([me, ghost], [inst("i-07", "10.0.0.7")], {"7": {"unstarted": 0.0}}, 601.0,
                         stale_grace_s=300, unstarted_grace_s=600, self_id=1)
    assert [(c.member.id, c.reason, c.ripe) for c in cands] == [(7, "unstarted", True)]
    assert "1" not in seen


def test_assess_orders_non_voters_first():
    dead_voter = member(1, "i-01", "10.0.0.1")
    dead_learner = member(2, "i-02", "10.0.0.2", learner=True)
    _, cands = assess([dead_voter, dead_learner], [], {"1": {"gone": 0.0}, "2": {"gone": 0.0}}, 1000.0,
                      stale_grace_s=300, unstarted_grace_s=600)
    assert [c.member.id for c in cands] == [2, 1]


# --- wire helpers ---

@pytest.mark.parametrize(("body", "cls"), [
    ({"error": "etcdserver: unhealthy cluster", "code": 14, "message": "etcdserver: unhealthy cluster"},
     UnhealthyCluster),
    ({"code": 9, "message": "etcdserver: too many learner members in cluster"}, TooManyLearners),
    ({"code": 9, "message": "etcdserver: can only promote a learner member which is in sync with leader"},
     LearnerNotInSync),
    ({"code": 5, "message": "etcdserver: member not found"}, MemberNotFound),
    ({"error": {"grpc_code": 14, "message": "etcdserver: unhealthy cluster"}}, UnhealthyCluster),
    ({"code": 2, "message": "something else"}, EtcdError),
])
def test_error_mapping(body, cls):
    err = error_from_body(400, body, "http://127.0.0.1:2379")
    assert type(err) is cls
    assert err.etcd_message and err.endpoint == "http://127.0.0.1:2379"


def test_error_without_body_names_the_status():
    assert "HTTP 502" in str(error_from_body(502, None, "http://x:1"))


def test_gateway_prefix_and_ids():
    assert gateway_prefix("3.3.27") == "/v3beta"
    assert gateway_prefix("3.4.23") == "/v3"
    assert gateway_prefix("3.5.1") == "/v3"
    assert member_id_hex(255) == "ff" and int(member_id_hex(1886424282058903940), 16) == 1886424282058903940
    m = Member.from_json({"ID": "15133411956901961300", "peerURLs": ["http://[::1]:2380"], "isLearner": True})
    assert m.id == 15133411956901961300 and m.is_learner and not m.started and m.peer_host == "::1"
    assert url_host("https://10.0.0.1:2379") == "10.0.0.1"
