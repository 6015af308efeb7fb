"""Pure membership logic: quorum math, removal and leave proofs, leadership choice, and the
``--initial-cluster`` value. No I/O here; every function takes plain values and is tested so.

Raft facts used: a cluster of ``n`` voters commits with ``n // 2 + 1`` of them (its quorum);
learners do not vote and do not count. A membership change is committed under the *old*
configuration and then governs the *new* one, so removing a voter is safe only when the healthy
voters left can still form the quorum of the smaller cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from herd_agent.etcd.client import Member, MemberStatus, member_id_hex

# A follower this many raft entries behind the best known index still counts as caught up.
CAUGHT_UP_SLACK = 1000


def quorum_size(voters: int) -> int:
    """Votes needed to commit in a cluster of ``voters`` voting members (0 for an empty cluster)."""
    return voters // 2 + 1 if voters > 0 else 0


def quorum_margin(voters: int, healthy: int) -> int:
    """How many more healthy voters may fail before commits stop: ``healthy - quorum(voters)``.

    Negative means the cluster has lost quorum.
    """
    return healthy - quorum_size(voters)


@dataclass(frozen=True)
class Verdict:
    """The outcome of a safety check.

    Attributes:
        ok: the change is safe.
        reason: one line that says why (printed and logged either way).
        facts: the numbers the decision used (voters before/after, healthy left, quorum after).
    """

    ok: bool
    reason: str
    facts: Mapping[str, object]


def healthy_voters(members: Sequence[Member], statuses: Mapping[int, MemberStatus | None]) -> set[int]:
    """IDs of started voters whose status shows them healthy.

    A voter is healthy when it answered ``/maintenance/status`` with no errors, knows a leader,
    and its raft index is within :data:`CAUGHT_UP_SLACK` of the best index seen.

    Args:
        members: the member list.
        statuses: member ID → its status, or None when it did not answer.
    """
    answered = [s for s in statuses.values() if s is not None]
    best = max((s.raft_index for s in answered), default=0)
    out: set[int] = set()
    for m in members:
        if m.is_learner or not m.started:
            continue
        s = statuses.get(m.id)
        if s is None or s.errors or s.leader == 0:
            continue
        if best - s.raft_index > CAUGHT_UP_SLACK:
            continue
        out.add(m.id)
    return out


def removal_verdict(
    members: Sequence[Member],
    healthy: Iterable[int],
    target: int,
    *,
    allow_two_to_one: bool = False,
) -> Verdict:
    """May ``target`` be removed without losing quorum?

    Rules: removing a learner never changes the quorum; removing a voter needs the healthy
    started voters other than the target to reach the quorum of the new size, and the cluster
    must keep at least one voter. A two-voter cluster is never shrunk unless
    ``allow_two_to_one`` (a member leaving by itself with its peer healthy).

    Args:
        members: the current member list.
        healthy: IDs of healthy started voters (see :func:`healthy_voters`).
        target: the member to remove.
    """
    healthy = set(healthy)
    by_id = {m.id: m for m in members}
    if target not in by_id:
        return Verdict(True, f"member {member_id_hex(target)} is not in the cluster", {})
    voters = [m.id for m in members if m.is_voter]
    member = by_id[target]
    if member.is_learner:
        return Verdict(True, "a learner does not vote; removing it leaves the quorum unchanged",
                       {"voters": len(voters), "healthy": len(healthy & set(voters))})
    after = len(voters) - 1
    left = len((healthy & set(voters)) - {target})
    need = quorum_size(after)
    facts = {"voters_before": len(voters), "voters_after": after, "healthy_left": left, "quorum_after": need}
    if after < 1:
        return Verdict(False, "refusing to remove the last voter", facts)
    if len(voters) == 2 and not allow_two_to_one:
        return Verdict(False, "refusing to shrink a two-member cluster automatically", facts)
    if left < need:
        return Verdict(False, f"only {left} healthy voter(s) would remain, quorum of {after} is {need}", facts)
    return Verdict(True, f"{left} healthy voter(s) remain, quorum of {after} is {need}", facts)


def most_caught_up(statuses: Mapping[int, MemberStatus | None], candidates: Iterable[int]) -> int | None:
    """The candidate with the highest raft index (then applied index; ties → lowest ID), or None."""
    best: tuple[int, int, int] | None = None
    for mid in candidates:
        s = statuses.get(mid)
        if s is None or s.errors:
            continue
        key = (s.raft_index, s.raft_applied_index, -mid)
        if best is None or key > best:
            best = key
    return None if best is None else -best[2]


def leader_of(statuses: Mapping[int, MemberStatus | None]) -> int:
    """The leader most answering members agree on (0 when none is known)."""
    votes: dict[int, int] = {}
    for s in statuses.values():
        if s is not None and s.leader:
            votes[s.leader] = votes.get(s.leader, 0) + 1
    return max(votes, key=lambda k: (votes[k], -k)) if votes else 0


def render_initial_cluster(members: Sequence[Member], self_name: str, self_peer_url: str) -> str:
    """The ``--initial-cluster`` value for a member joining ``members`` (state ``existing``).

    etcd compares the *count* and peer URLs of this list with the live membership ("member count
    is unequal" otherwise), so it lists every member: started ones as ``name=peerURL``, members
    added but never started under a placeholder name ``unstarted-<hex id>`` (etcd matches them
    by URL), and self as ``self_name=self_peer_url`` (whether or not ``members`` already holds
    our just-added entry). Entries are sorted by name for a stable file.
    """
    entries: dict[str, str] = {}
    for m in members:
        if self_peer_url in m.peer_urls:
            continue
        name = m.name or f"unstarted-{member_id_hex(m.id)}"
        for url in m.peer_urls:
            entries.setdefault(f"{name}={url}", name)
    entries[f"{self_name}={self_peer_url}"] = self_name
    return ",".join(sorted(entries, key=lambda e: (entries[e], e)))
