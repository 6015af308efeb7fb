"""Leave: this instance's member goes, quorum-safely.

**External mode** (:func:`leave`), under the membership lock taken through the *other* members:

1. A fresh ``Maintenance.Status`` of every voter; the proof holds when the healthy voters other
   than us reach the quorum of ``n - 1`` (:func:`herd_agent.etcd.quorum.removal_verdict`; a
   leaving member of a two-member cluster may go when its peer is healthy). Otherwise
   :class:`~herd_agent.etcd.errors.QuorumRefused` and nothing changes.
2. If we lead, ``Maintenance.MoveLeader`` to the most caught-up healthy voter, and wait until it
   reports a new leader (etcd's "move leader" API; a leader that removes itself otherwise costs
   an election).
3. ``MemberRemove`` of ourselves through another member; confirm from another healthy member's
   linearizable member list that our ID is gone.
4. Stop the unit, rotate the data dir ("the member has been permanently removed" makes it
   useless), journal ``removed``.

**Embedded mode** (:func:`leave_embedded`, k3s' etcd): delete the Node through a callable (k3s'
etcd controller removes the member of a deleted Node), wait for the member to go, and run the
external steps 1–3 directly when it does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from herd_agent.etcd.client import EtcdClient, Member, member_id_hex
from herd_agent.etcd.errors import EtcdError, MemberNotFound, QuorumRefused, WaitTimeout
from herd_agent.etcd.journal import data_dir_in_use, read_journal, rotate_data_dir
from herd_agent.etcd.member import LocalMember
from herd_agent.etcd.quorum import Verdict, healthy_voters, leader_of, most_caught_up, removal_verdict
from herd_agent.etcd.status import collect_statuses, member_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaveResult:
    """What a leave did.

    Attributes:
        member_id: our former member ID (0 when we were not a member).
        removed: our member was removed by this call.
        leadership_to: the member leadership moved to (0 when we were not the leader).
        verdict: the quorum proof.
        leave_s: seconds from the proof to the confirmed removal.
    """

    member_id: int
    removed: bool
    leadership_to: int = 0
    verdict: Verdict | None = None
    leave_s: float = 0.0


def leave(me: LocalMember, peers: Sequence[str]) -> LeaveResult:
    """Remove ourselves quorum-safely, then stop etcd and rotate the data dir (external mode).

    Args:
        peers: client URLs of the cluster (ours may be among them).

    Raises:
        QuorumRefused: removing us would break quorum (nothing changed; etcd still runs).
        WaitTimeout: leadership did not move or the removal was not confirmed in time.
        EtcdError: the cluster did not answer.
    """
    result = remove_self(me, peers)
    me.systemctl("stop")
    if data_dir_in_use(me.root, me.settings.data_dir):
        rotate_data_dir(me.root, me.settings.data_dir, "this member left the cluster")
    return result


def leave_embedded(me: LocalMember, peers: Sequence[str], delete_node: Callable[[], None]) -> LeaveResult:
    """Leave k3s' embedded etcd: delete the Node (k3s removes the member), verify, fall back.

    Args:
        peers: client URLs of the cluster.
        delete_node: deletes our Kubernetes Node object (k3s' etcd finalizer removes the member).

    Raises:
        QuorumRefused, WaitTimeout, EtcdError: as :func:`leave`, from the fallback removal.
    """
    client = me.client(peers)
    _, members = client.member_list()
    found = find_self(me, members)
    if found is None:
        log.info("etcd member for %s is already gone", me.identity.name)
        delete_node()
        return LeaveResult(0, False)
    delete_node()
    others = _other_endpoints(members, found.id) or list(peers)
    if wait_gone(client.with_endpoints(others), found.id, me.settings.embedded_removal_wait_s):
        log.info("k3s removed etcd member %s after the Node was deleted", member_id_hex(found.id))
        return LeaveResult(found.id, True)
    log.warning("etcd member %s is still present %.0fs after the Node was deleted; removing it directly",
                member_id_hex(found.id), me.settings.embedded_removal_wait_s)
    return remove_self(me, peers)


def find_self(me: LocalMember, members: Sequence[Member]) -> Member | None:
    """Our member: the journal's ID, else the one with our name or peer URL."""
    journal = read_journal(me.root, me.settings.data_dir)
    for m in members:
        if journal and m.id == journal.member_id:
            return m
    mine = me.mine(members)
    return mine[0] if mine else None


def _other_endpoints(members: Sequence[Member], self_id: int) -> list[str]:
    return [u for m in members if m.id != self_id and m.is_voter for u in m.client_urls]


def wait_gone(client: EtcdClient, member_id: int, timeout_s: float) -> bool:
    """Wait until ``member_id`` is absent from the member list; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, members = client.member_list()
            if all(m.id != member_id for m in members):
                return True
        except EtcdError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def remove_self(me: LocalMember, peers: Sequence[str]) -> LeaveResult:
    """Steps 1–3 of the module doc: proof, leadership move, removal, confirmation; journal ``removed``."""
    settings = me.settings
    client = me.client(list(peers) + [me.client_url])
    cluster_id, members = client.member_list()
    found = find_self(me, members)
    if found is None:
        log.info("etcd member for %s is not in the cluster; nothing to remove", me.identity.name)
        return LeaveResult(0, False)
    others = _other_endpoints(members, found.id)
    if not others:
        raise QuorumRefused("refusing to remove the last etcd voter", Verdict(False, "last voter", {}))
    other_client = client.with_endpoints(others)
    with me.lock(other_client, wait_s=settings.leave_timeout_s) as lock:
        started = time.monotonic()
        _, members = other_client.member_list()
        self_member = next((m for m in members if m.id == found.id), None)
        if self_member is None:
            return LeaveResult(0, False)
        statuses = collect_statuses(other_client, members)
        healthy = healthy_voters(members, statuses)
        verdict = removal_verdict(members, healthy, self_member.id, allow_two_to_one=True)
        proof = {member_id_hex(mid): (s.raft_index if s else None) for mid, s in statuses.items()}
        if not verdict.ok:
            log.error("not leaving etcd: %s (raft indexes %s)", verdict.reason, proof)
            raise QuorumRefused(f"leaving would break etcd quorum: {verdict.reason}", verdict)
        log.info("etcd leave proof: %s; raft indexes %s", verdict.reason, proof)
        moved_to = 0
        if leader_of(statuses) == self_member.id and self_member.is_voter:
            moved_to = _move_leadership(me, other_client, self_member, members, statuses, healthy)
        lock.check()
        try:
            other_client.member_remove(self_member.id)
        except MemberNotFound:
            pass
        confirm = other_client.with_endpoints(
            [u for m in members if m.id != self_member.id and m.id in healthy for u in m.client_urls] or others)
        if not wait_gone(confirm, self_member.id, settings.leave_timeout_s):
            raise WaitTimeout(f"removal of etcd member {member_id_hex(self_member.id)} not confirmed by another member")
        elapsed = time.monotonic() - started
    me.journal(cluster_id, self_member.id, "removed")
    log.info("etcd member %s (%s) removed and confirmed in %.2fs", member_id_hex(self_member.id), me.identity.name,
             elapsed)
    return LeaveResult(self_member.id, True, moved_to, verdict, elapsed)


def _move_leadership(me: LocalMember, client: EtcdClient, self_member: Member, members: Sequence[Member],
                     statuses: dict, healthy: set[int]) -> int:
    target = most_caught_up(statuses, healthy - {self_member.id})
    if target is None:
        raise QuorumRefused("no healthy voter to take over etcd leadership",
                            Verdict(False, "no leadership target", {}))
    by_id = {m.id: m for m in members}
    log.info("moving etcd leadership from %s to %s", member_id_hex(self_member.id), member_id_hex(target))
    deadline = time.monotonic() + me.settings.leave_timeout_s
    while True:
        try:
            for url in self_member.client_urls:
                client.transfer_leadership(url, target)
                break
        except EtcdError as exc:
            log.info("leadership transfer not done yet: %s", exc)
        s = member_status(client, by_id[target])
        if s is not None and s.leader and s.leader != self_member.id:
            return s.leader
        if time.monotonic() > deadline:
            raise WaitTimeout(f"etcd leadership did not move off {member_id_hex(self_member.id)}")
        time.sleep(0.05)
