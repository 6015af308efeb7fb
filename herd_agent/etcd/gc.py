"""Stale-member cleanup from cloud truth (``herd-agent etcd gc``; also before every join, and
periodically on control planes through :func:`gc_once`).

A member is **stale** only when one of these has held for longer than its grace period,
measured from when *we* first saw it (first-seen times persist in a small state file):

- *gone*: the cloud says the member's instance is terminated, or no instance matches it. A
  started member matches an instance when the instance's private IP equals the member's peer IP
  **and** the member's name is the instance id, its private DNS short name, or its Name tag,
  optionally followed by the ``-xxxxxxxx`` suffix k3s gives embedded members (so a new
  instance that reuses a dead member's IP does not keep the dead member alive);
  an unstarted member (no name yet) matches any live instance at its peer IP.
- *unstarted*: added but never started (empty name, no client URLs).

Removal rules: one member per pass; never ourselves; never when the healthy started voters left
would fall below the quorum of the new size (:func:`herd_agent.etcd.quorum.removal_verdict`);
never a two-member cluster. Each removal is logged at WARNING with its proof (what the cloud
said, since when, the quorum facts).

Cloud truth sits behind :class:`InstanceOracle`; :class:`Ec2InstanceOracle` is the EC2
``DescribeInstances`` implementation (boto3 imported on first use; honours ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from herd_agent.errors import ExitCode, HerdError
from herd_agent.etcd.client import EtcdClient, Member, MemberNotFound, member_id_hex
from herd_agent.etcd.quorum import Verdict, healthy_voters, removal_verdict
from herd_agent.etcd.status import collect_statuses
from herd_agent.host.fsroot import HostRoot

log = logging.getLogger(__name__)

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
GONE_STATES = frozenset({"terminated"})


@dataclass(frozen=True)
class InstanceInfo:
    """What the cloud says about one instance.

    Attributes:
        instance_id: ``i-…``.
        private_ip: primary private IPv4.
        state: EC2 state name (pending, running, shutting-down, terminated, stopping, stopped).
        private_dns_name: e.g. ``ip-10-0-1-5.ec2.internal`` (k3s' hostname-style node names).
        name_tag: the ``Name`` tag, when set.
    """

    instance_id: str
    private_ip: str
    state: str
    private_dns_name: str = ""
    name_tag: str = ""


class CloudTruthUnavailable(HerdError):
    """The instance oracle failed (EC2 throttled, unreachable, access denied): no stale decision."""

    exit_code = ExitCode.UNAVAILABLE


class InstanceOracle(Protocol):
    """Cloud truth about instances."""

    def describe(self, names: Sequence[str], ips: Sequence[str]) -> list[InstanceInfo]:
        """Instances whose id is one of ``names`` or whose private IP is one of ``ips``.

        Terminated instances the cloud still lists are included (state ``terminated``); an
        instance the cloud no longer knows is simply absent.
        """
        ...


class Ec2InstanceOracle:
    """:class:`InstanceOracle` over EC2 ``DescribeInstances`` (filters ``instance-id`` and
    ``private-ip-address``, paginated, 200 values per filter).

    Args:
        region: AWS region (default: boto3's own resolution).
        client: a ready boto3 EC2 client (tests); built lazily otherwise, so importing this
            module never imports boto3. boto3 honours ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_EC2``.
    """

    def __init__(self, region: str | None = None, client: Any = None) -> None:
        self.region = region
        self._client = client

    def _ec2(self) -> Any:
        if self._client is None:
            import boto3  # lazily: 0.3 s and 35 MiB we only pay when gc runs

            self._client = boto3.client("ec2", region_name=self.region)
        return self._client

    def describe(self, names: Sequence[str], ips: Sequence[str]) -> list[InstanceInfo]:
        """See :meth:`InstanceOracle.describe`.

        Raises:
            botocore.exceptions.ClientError / BotoCoreError: EC2 refused or did not answer.
        """
        ids = sorted({n for n in names if INSTANCE_ID.fullmatch(n)})
        found: dict[str, InstanceInfo] = {}
        paginator = self._ec2().get_paginator("describe_instances")
        for filter_name, values in (("instance-id", ids), ("private-ip-address", sorted(set(ips)))):
            for i in range(0, len(values), 200):
                chunk = values[i:i + 200]
                for page in paginator.paginate(Filters=[{"Name": filter_name, "Values": chunk}]):
                    for res in page.get("Reservations", []):
                        for inst in res.get("Instances", []):
                            info = _info(inst)
                            found[info.instance_id] = info
        return list(found.values())


def _info(inst: Mapping[str, Any]) -> InstanceInfo:
    tags = {t.get("Key"): t.get("Value", "") for t in inst.get("Tags", []) or []}
    return InstanceInfo(
        instance_id=inst["InstanceId"],
        private_ip=inst.get("PrivateIpAddress", "") or "",
        state=(inst.get("State") or {}).get("Name", ""),
        private_dns_name=inst.get("PrivateDnsName", "") or "",
        name_tag=tags.get("Name", "") or "",
    )


# --- pure decision -------------------------------------------------------------------------------


# k3s names its embedded etcd members "<node name>-<first 8 hex digits of a UUID>".
_K3S_SUFFIX = re.compile(r"-[0-9a-f]{8}")


def name_matches(member_name: str, instance_names: Iterable[str]) -> bool:
    """True when ``member_name`` is one of ``instance_names``, or one of them plus k3s' ``-xxxxxxxx``."""
    for n in instance_names:
        if not n:
            continue
        if member_name == n:
            return True
        if member_name.startswith(n) and _K3S_SUFFIX.fullmatch(member_name[len(n):]):
            return True
    return False


def matches(member: Member, inst: InstanceInfo) -> bool:
    """True when ``inst`` is the instance behind ``member`` (see the module doc)."""
    if not member.peer_host or inst.private_ip != member.peer_host:
        return False
    if not member.name:
        return True
    short_dns = inst.private_dns_name.split(".", 1)[0]
    return name_matches(member.name, (inst.instance_id, short_dns, inst.name_tag))


def instance_verdict(member: Member, instances: Iterable[InstanceInfo]) -> tuple[bool, str]:
    """``(gone, evidence)``: whether the cloud says the member's instance is gone, and why."""
    mine = [i for i in instances if matches(member, i)]
    live = [i for i in mine if i.state not in GONE_STATES]
    if live:
        i = live[0]
        return False, f"instance {i.instance_id} at {i.private_ip} is {i.state}"
    if mine:
        i = mine[0]
        return True, f"instance {i.instance_id} at {i.private_ip} is {i.state}"
    return True, f"no instance named {member.name or '(unstarted)'} at {member.peer_host or '?'} exists"


@dataclass(frozen=True)
class Candidate:
    """A member that looks stale.

    Attributes:
        member: the member.
        reason: ``gone`` or ``unstarted``.
        evidence: what the cloud / the member list said.
        since: epoch seconds when we first saw this condition.
        ripe: the grace period has passed (eligible for removal).
    """

    member: Member
    reason: str
    evidence: str
    since: float
    ripe: bool

    def to_json(self, now: float) -> dict[str, Any]:
        """Plain dict for status output."""
        return {"id": str(self.member.id), "id_hex": member_id_hex(self.member.id), "name": self.member.name,
                "reason": self.reason, "evidence": self.evidence, "for_s": round(now - self.since, 1),
                "ripe": self.ripe}


def assess(
    members: Sequence[Member],
    instances: Sequence[InstanceInfo],
    seen: Mapping[str, Mapping[str, float]],
    now: float,
    *,
    stale_grace_s: float,
    unstarted_grace_s: float,
    self_id: int | None = None,
) -> tuple[dict[str, dict[str, float]], list[Candidate]]:
    """Decide which members look stale and which are ripe for removal.

    Args:
        members: the current member list.
        instances: the oracle's answer for those members.
        seen: first-seen state ``{member id: {"gone": t, "unstarted": t}}`` (epoch seconds).
        now: epoch seconds.
        self_id: our own member, never a candidate.

    Returns:
        ``(new seen state, candidates)``; state entries of members now healthy or gone from the
        list are dropped, so a condition must hold continuously for its grace period.
    """
    new_seen: dict[str, dict[str, float]] = {}
    out: list[Candidate] = []
    for m in members:
        if m.id == self_id:
            continue
        key = str(m.id)
        old = seen.get(key, {})
        entry: dict[str, float] = {}
        conditions: list[tuple[str, str, float]] = []
        if not m.started:
            entry["unstarted"] = float(old.get("unstarted", now))
            conditions.append(("unstarted", "added but never started (no name, no client URLs)",
                               unstarted_grace_s))
        gone, evidence = instance_verdict(m, instances)
        if gone:
            entry["gone"] = float(old.get("gone", now))
            conditions.append(("gone", evidence, stale_grace_s))
        if not entry:
            continue
        new_seen[key] = entry
        best: Candidate | None = None
        for reason, ev, grace in conditions:
            since = entry[reason]
            c = Candidate(m, reason, ev, since, now - since >= grace)
            if best is None or (c.ripe and not best.ripe):
                best = c
        assert best is not None
        out.append(best)
    # Learners and unstarted members first: removing them never costs a vote.
    out.sort(key=lambda c: (c.member.is_voter and c.member.started, -c.ripe, c.since, c.member.id))
    return new_seen, out


# --- the pass --------------------------------------------------------------------------------


@dataclass
class GcResult:
    """What one pass found and did.

    Attributes:
        candidates: every member that looks stale (ripe or not).
        removed: the member removed in this pass, or None.
        refused: ``(candidate, verdict)`` pairs that were ripe but unsafe to remove.
    """

    candidates: list[Candidate] = field(default_factory=list)
    removed: Candidate | None = None
    removed_verdict: Verdict | None = None
    refused: list[tuple[Candidate, Verdict]] = field(default_factory=list)


def load_seen(root: HostRoot, path: str) -> dict[str, dict[str, float]]:
    """The first-seen state file (missing or unreadable → empty)."""
    try:
        data = json.loads(root.read_text(path, default="{}"))
        return {str(k): {str(a): float(b) for a, b in v.items()} for k, v in data.items()}
    except (ValueError, AttributeError, TypeError):
        log.warning("ignoring unreadable etcd gc state %s", path)
        return {}


def save_seen(root: HostRoot, path: str, seen: Mapping[str, Mapping[str, float]]) -> None:
    """Write the first-seen state atomically (mode 0644)."""
    root.write(path, json.dumps(seen, indent=1, sort_keys=True) + "\n", mode=0o644)


def gc_once(
    client: EtcdClient,
    oracle: InstanceOracle,
    root: HostRoot,
    *,
    state_file: str,
    stale_grace_s: float,
    unstarted_grace_s: float,
    self_id: int | None = None,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
    status_timeout_s: float = 2.0,
) -> GcResult:
    """One stale-member pass: assess every member and remove at most one ripe, safe candidate.

    Args:
        client: client of the cluster.
        oracle: cloud truth.
        root: host root holding ``state_file``.
        state_file: host path of the first-seen state.
        stale_grace_s, unstarted_grace_s: grace periods, seconds.
        self_id: our member ID (never removed here).
        dry_run: decide and report, remove nothing.
        clock: epoch-seconds clock (tests move time forward with it).
        status_timeout_s: per-member status timeout, seconds.

    Raises:
        CloudTruthUnavailable: the oracle failed; nothing was decided or removed.
        EtcdError: the cluster did not answer (a removal refused by etcd's own guard after
            its retries, too).
    """
    _, members = client.member_list(linearizable=False)  # must work when quorum is lost
    names = [m.name for m in members if m.name]
    ips = [m.peer_host for m in members if m.peer_host]
    try:
        instances = oracle.describe(names, ips)
    except HerdError:
        raise
    except Exception as exc:  # botocore raises many types; none of them may remove a member
        raise CloudTruthUnavailable(f"cannot ask the cloud about etcd members: {exc}") from exc
    now = clock()
    seen, candidates = assess(members, instances, load_seen(root, state_file), now,
                              stale_grace_s=stale_grace_s, unstarted_grace_s=unstarted_grace_s, self_id=self_id)
    save_seen(root, state_file, seen)
    result = GcResult(candidates=candidates)
    ripe = [c for c in candidates if c.ripe]
    if not ripe:
        for c in candidates:
            log.info("etcd member %s (%s) looks stale (%s: %s) for %.0fs; waiting for its grace period",
                     member_id_hex(c.member.id), c.member.name or "unstarted", c.reason, c.evidence, now - c.since)
        return result
    statuses = collect_statuses(client, members, timeout_s=status_timeout_s)
    healthy = healthy_voters(members, statuses)
    for c in ripe:
        verdict = removal_verdict(members, healthy, c.member.id)
        if not verdict.ok:
            log.warning("not removing stale etcd member %s (%s): %s; proof against it: %s: %s",
                        member_id_hex(c.member.id), c.member.name or "unstarted", verdict.reason, c.reason,
                        c.evidence)
            result.refused.append((c, verdict))
            continue
        if dry_run:
            log.info("dry run: would remove etcd member %s (%s): %s", member_id_hex(c.member.id),
                     c.member.name or "unstarted", c.evidence)
            result.removed, result.removed_verdict = c, verdict
            return result
        log.warning(
            "removing stale etcd member %s (name %s, peer %s): %s: %s, first seen %.0fs ago; quorum: %s %s",
            member_id_hex(c.member.id), c.member.name or "(unstarted)", ",".join(c.member.peer_urls), c.reason,
            c.evidence, now - c.since, verdict.reason, dict(verdict.facts),
        )
        try:
            client.member_remove(c.member.id)
        except MemberNotFound:
            log.info("etcd member %s was already removed", member_id_hex(c.member.id))
        seen.pop(str(c.member.id), None)
        save_seen(root, state_file, seen)
        result.removed, result.removed_verdict = c, verdict
        return result
    return result
