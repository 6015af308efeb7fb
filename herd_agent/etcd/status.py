"""Cluster status: every member's ``/maintenance/status``, the leader, learners, quorum margin
and stale candidates (``herd-agent etcd status``, table or ``--json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from herd_agent.etcd.client import EtcdClient, EtcdError, Member, MemberStatus, member_id_hex
from herd_agent.etcd.quorum import healthy_voters, leader_of, quorum_margin, quorum_size


def member_status(client: EtcdClient, member: Member, timeout_s: float = 2.0) -> MemberStatus | None:
    """Status of ``member`` from the first of its client URLs that answers, or None."""
    for url in member.client_urls:
        try:
            s = client.status(url, timeout_s=timeout_s)
        except EtcdError:
            continue
        if s.member_id == member.id:
            return s
    return None


def collect_statuses(client: EtcdClient, members: Sequence[Member],
                     timeout_s: float = 2.0) -> dict[int, MemberStatus | None]:
    """Fresh ``Maintenance.Status`` of every started member, in parallel.

    Args:
        members: the member list.
        timeout_s: per-request timeout; a member that does not answer in time maps to None.

    Returns:
        member ID → status (None for silent or unstarted members).
    """
    started = [m for m in members if m.client_urls]
    out: dict[int, MemberStatus | None] = {m.id: None for m in members}
    if not started:
        return out
    with ThreadPoolExecutor(max_workers=min(8, len(started))) as pool:
        for m, s in zip(started, pool.map(lambda m: member_status(client, m, timeout_s), started), strict=True):
            out[m.id] = s
    return out


@dataclass
class ClusterStatus:
    """A snapshot of the cluster.

    Attributes:
        cluster_id: etcd cluster ID.
        members: the member list.
        statuses: member ID → status or None.
        stale: stale candidates as dicts (see :meth:`herd_agent.etcd.gc.Candidate.to_json`).
    """

    cluster_id: int
    members: list[Member]
    statuses: dict[int, MemberStatus | None]
    stale: list[dict[str, Any]] = field(default_factory=list)

    @property
    def voters(self) -> list[Member]:
        """Voting members."""
        return [m for m in self.members if m.is_voter]

    @property
    def learners(self) -> list[Member]:
        """Learner members."""
        return [m for m in self.members if m.is_learner]

    @property
    def healthy(self) -> set[int]:
        """IDs of healthy started voters."""
        return healthy_voters(self.members, self.statuses)

    @property
    def leader(self) -> int:
        """Leader ID (0 when unknown)."""
        return leader_of(self.statuses)

    @property
    def margin(self) -> int:
        """Quorum margin: healthy voters minus the quorum (negative = quorum lost)."""
        return quorum_margin(len(self.voters), len(self.healthy))

    def to_json(self) -> dict[str, Any]:
        """The JSON document ``herd-agent etcd status --json`` prints."""
        healthy = self.healthy
        rows = []
        for m in self.members:
            s = self.statuses.get(m.id)
            row = m.to_json()
            row.update({"healthy": m.id in healthy, "leader": m.id == self.leader,
                        "raft_index": s.raft_index if s else None, "errors": list(s.errors) if s else None,
                        "version": s.version if s else None})
            rows.append(row)
        return {"cluster_id": str(self.cluster_id), "leader": str(self.leader),
                "leader_hex": member_id_hex(self.leader), "voters": len(self.voters),
                "healthy_voters": len(healthy), "quorum": quorum_size(len(self.voters)),
                "quorum_margin": self.margin, "learners": [str(m.id) for m in self.learners],
                "members": rows, "stale_candidates": self.stale}

    def to_table(self) -> str:
        """A table for people (IDs in hex, as etcdctl prints them)."""
        healthy = self.healthy
        head = ("ID", "NAME", "PEER URL", "ROLE", "HEALTH", "RAFT INDEX")
        rows = [head]
        for m in self.members:
            s = self.statuses.get(m.id)
            role = "learner" if m.is_learner else ("leader" if m.id == self.leader else "voter")
            health = "healthy" if m.id in healthy else ("unstarted" if not m.started else "DOWN")
            rows.append((member_id_hex(m.id), m.name or "-", ",".join(m.peer_urls), role, health,
                         str(s.raft_index) if s else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append("")
        lines.append(f"cluster {member_id_hex(self.cluster_id)}: {len(self.voters)} voters, {len(healthy)} healthy, "
                     f"quorum {quorum_size(len(self.voters))}, margin {self.margin}, "
                     f"learners {len(self.learners)}, leader {member_id_hex(self.leader) if self.leader else 'none'}")
        if self.stale:
            lines.append("stale candidates:")
            for c in self.stale:
                state = "ripe" if c["ripe"] else "in grace"
                lines.append(f"  {c['id_hex']} {c['name'] or '(unstarted)'}: {c['reason']}, {c['evidence']} "
                             f"({c['for_s']:.0f}s, {state})")
        return "\n".join(lines)


def cluster_status(client: EtcdClient, timeout_s: float = 2.0) -> ClusterStatus:
    """Member list plus a fresh status of every member (no stale assessment; the CLI adds it).

    Raises:
        EtcdError: no endpoint answered the member list.
    """
    cluster_id, members = client.member_list(linearizable=False)  # must work when quorum is lost
    return ClusterStatus(cluster_id, members, collect_statuses(client, members, timeout_s))
