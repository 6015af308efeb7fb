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
- *going-away*: the member does not answer its status **and** the cloud says its instance is
  going away: Auto Scaling ``LifecycleState`` ``Terminating``/``Terminating:Wait``/
  ``Terminating:Proceed``/``Terminated`` or ``HealthStatus`` ``Unhealthy``
  (``DescribeAutoScalingInstances``), or EC2 ``shutting-down``/``terminated``. Its grace is
  ``going_away_grace_s`` (default ``stale_grace_s``); a joiner passes 0, so a dead voter that
  blocks its learner add is removed during its own wait (docs/etcd.md, "Join").

**The cloud is asked only on evidence.** A pass first reads the member list and every started
member's status (local network only). It calls EC2 (and Auto Scaling) only when a member does
not answer, is unstarted, is already a tracked candidate, or is *unknown* — not yet confirmed by
the cloud as a live instance in this state file. Members confirmed once and still answering need
no cloud truth (an answering member is alive), so an idle healthy cluster makes no AWS call.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from herd_agent.errors import HerdError
from herd_agent.etcd.client import EtcdClient, Member, member_id_hex
from herd_agent.etcd.errors import CloudTruthUnavailable, MemberNotFound
from herd_agent.etcd.quorum import Verdict, healthy_voters, removal_verdict
from herd_agent.etcd.status import collect_statuses
from herd_agent.host.fsroot import HostRoot

log = logging.getLogger(__name__)

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
GONE_STATES = frozenset({"terminated"})
LEAVING_EC2_STATES = frozenset({"shutting-down", "terminated"})


@dataclass(frozen=True)
class InstanceInfo:
    """What the cloud says about one instance.

    Attributes:
        instance_id: ``i-…``.
        private_ip: primary private IPv4.
        state: EC2 state name (pending, running, shutting-down, terminated, stopping, stopped).
        private_dns_name: e.g. ``ip-10-0-1-5.ec2.internal`` (k3s' hostname-style node names).
        name_tag: the ``Name`` tag, when set.
        lifecycle_state: Auto Scaling ``LifecycleState`` (``InService``, ``Terminating:Wait``, …),
            "" when the instance is in no group or Auto Scaling was not asked.
        health_status: Auto Scaling ``HealthStatus`` (``HEALTHY``/``UNHEALTHY``), "" likewise.
    """

    instance_id: str
    private_ip: str
    state: str
    private_dns_name: str = ""
    name_tag: str = ""
    lifecycle_state: str = ""
    health_status: str = ""

    @property
    def going_away(self) -> bool:
        """The cloud says this instance is leaving: Auto Scaling Terminating*/Terminated or
        Unhealthy, or EC2 shutting-down/terminated."""
        return (self.state in LEAVING_EC2_STATES or self.lifecycle_state.startswith("Terminat")
                or self.health_status.upper() == "UNHEALTHY")


class InstanceOracle(Protocol):
    """Cloud truth about instances."""

    def describe(self, names: Sequence[str], ips: Sequence[str]) -> list[InstanceInfo]:
        """Instances whose id is one of ``names`` or whose private IP is one of ``ips``.

        Terminated instances the cloud still lists are included (state ``terminated``); an
        instance the cloud no longer knows is simply absent. ``lifecycle_state`` and
        ``health_status`` are filled when the instance is in an Auto Scaling group.
        """
        ...


class Ec2InstanceOracle:
    """:class:`InstanceOracle` over EC2 ``DescribeInstances`` (filters ``instance-id`` and
    ``private-ip-address``, paginated, 200 values per filter), plus Auto Scaling
    ``DescribeAutoScalingInstances`` (50 ids per call) for the lifecycle and health state of the
    instances EC2 still lists as live.

    Args:
        region: AWS region (default: boto3's own resolution).
        client: a ready boto3 EC2 client (tests: botocore's Stubber); built lazily otherwise, so
            importing this module never imports boto3. boto3 honours ``AWS_ENDPOINT_URL``.
        autoscaling: a ready boto3 Auto Scaling client; built lazily like ``client``.
    """

    def __init__(self, region: str | None = None, client: Any = None, autoscaling: Any = None) -> None:
        self.region = region
        self._client = client
        self._autoscaling = autoscaling

    def _ec2(self) -> Any:
        if self._client is None:
            from herd_agent import aws  # lazily: boto3 costs 0.3 s and 35 MiB, paid only when gc asks

            self._client = aws.client("ec2", self.region)
        return self._client

    def _asg(self) -> Any:
        if self._autoscaling is None:
            from herd_agent import aws

            self._autoscaling = aws.client("autoscaling", self.region)
        return self._autoscaling

    def _asg_states(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for i in range(0, len(ids), 50):
            try:
                resp = self._asg().describe_auto_scaling_instances(InstanceIds=list(ids[i:i + 50]))
            except Exception as exc:  # noqa: BLE001 - no group facts is not a reason to decide nothing
                log.info("Auto Scaling did not answer DescribeAutoScalingInstances (%s); EC2 states only", exc)
                return out
            for row in resp.get("AutoScalingInstances") or []:
                if isinstance(row, dict) and isinstance(row.get("InstanceId"), str):
                    out[row["InstanceId"]] = (str(row.get("LifecycleState") or ""),
                                              str(row.get("HealthStatus") or ""))
        return out

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
        live = sorted(i.instance_id for i in found.values() if i.state not in GONE_STATES)
        for iid, (lifecycle, health) in self._asg_states(live).items():
            if iid in found:
                found[iid] = replace(found[iid], lifecycle_state=lifecycle, health_status=health)
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


def going_away_verdict(member: Member, instances: Iterable[InstanceInfo]) -> tuple[bool, str]:
    """``(going away, evidence)``: the cloud says every instance behind ``member`` is leaving
    (:attr:`InstanceInfo.going_away`). False when no instance matches (that is *gone*)."""
    mine = [i for i in instances if matches(member, i)]
    if not mine or not all(i.going_away for i in mine):
        return False, ""
    i = mine[0]
    asg = f", Auto Scaling {i.lifecycle_state or '-'}/{i.health_status or '-'}" if i.lifecycle_state else ""
    return True, f"instance {i.instance_id} at {i.private_ip} is {i.state}{asg}, and the member does not answer"


def confirmed_live(member: Member, instances: Iterable[InstanceInfo]) -> str | None:
    """The instance id the cloud confirms as ``member``'s live, staying instance, or None."""
    for i in instances:
        if matches(member, i) and i.state not in GONE_STATES and not i.going_away:
            return i.instance_id
    return None


def cloud_evidence(members: Sequence[Member], silent: Collection[int], known: Mapping[str, str],
                   seen: Mapping[str, object], self_id: int | None = None) -> list[str]:
    """Why this pass must ask the cloud; empty when it need not (an idle, healthy, known cluster).

    Args:
        members: the member list.
        silent: IDs of started members that did not answer their status.
        known: member ID (decimal string) → instance id, members the cloud confirmed live before.
        seen: the first-seen state (tracked candidates).
        self_id: our own member (never evidence).
    """
    why: list[str] = []
    for m in members:
        if m.id == self_id:
            continue
        key, label = str(m.id), f"{member_id_hex(m.id)} ({m.name or 'unstarted'})"
        if not m.started:
            why.append(f"{label} is unstarted")
        elif m.id in silent:
            why.append(f"{label} does not answer")
        elif key in seen:
            why.append(f"{label} is a stale candidate")
        elif key not in known:
            why.append(f"{label} is not yet confirmed by the cloud")
    return why


@dataclass(frozen=True)
class Candidate:
    """A member that looks stale.

    Attributes:
        member: the member.
        reason: ``gone``, ``unstarted`` or ``going-away``.
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
    silent: Collection[int] = (),
    going_away_grace_s: float | None = None,
) -> tuple[dict[str, dict[str, float]], list[Candidate]]:
    """Decide which members look stale and which are ripe for removal.

    Args:
        members: the current member list.
        instances: the oracle's answer for those members.
        seen: first-seen state ``{member id: {"gone": t, "unstarted": t, "going-away": t}}`` (epoch s).
        now: epoch seconds.
        self_id: our own member, never a candidate.
        silent: IDs of members that did not answer their status (needed for *going-away*).
        going_away_grace_s: grace of the *going-away* condition; None = ``stale_grace_s``.

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
        leaving, why = going_away_verdict(m, instances)
        if leaving and m.id in silent:
            entry["going-away"] = float(old.get("going-away", now))
            conditions.append(("going-away", why,
                               stale_grace_s if going_away_grace_s is None else going_away_grace_s))
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
        evidence: why the pass asked the cloud (empty: it did not need to).
        asked_cloud: the pass called the instance oracle.
    """

    candidates: list[Candidate] = field(default_factory=list)
    removed: Candidate | None = None
    removed_verdict: Verdict | None = None
    refused: list[tuple[Candidate, Verdict]] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    asked_cloud: bool = False


def load_state(root: HostRoot, path: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The gc state file: ``(first-seen times, known members)`` (missing or unreadable → empty).

    The file is ``{"seen": {member id: {condition: epoch s}}, "known": {member id: instance id}}``;
    the older form, the ``seen`` mapping alone, is read too.
    """
    try:
        data = json.loads(root.read_text(path, default="{}"))
        if not isinstance(data, dict):
            raise TypeError("not a mapping")
        raw_seen = data.get("seen", {}) if "seen" in data or "known" in data else data
        seen = {str(k): {str(a): float(b) for a, b in v.items()} for k, v in raw_seen.items()}
        known = {str(k): str(v) for k, v in (data.get("known") or {}).items()} if "seen" in data else {}
        return seen, known
    except (ValueError, AttributeError, TypeError):
        log.warning("ignoring unreadable etcd gc state %s", path)
        return {}, {}


def load_seen(root: HostRoot, path: str) -> dict[str, dict[str, float]]:
    """The first-seen times of the gc state file (see :func:`load_state`)."""
    return load_state(root, path)[0]


def save_state(root: HostRoot, path: str, seen: Mapping[str, Mapping[str, float]],
               known: Mapping[str, str]) -> None:
    """Write the gc state atomically (mode 0644: member and instance ids only). Unchanged → no write."""
    text = json.dumps({"seen": seen, "known": known}, indent=1, sort_keys=True) + "\n"
    if root.read_text(path, default="") != text:
        root.write(path, text, mode=0o644)


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
    going_away_grace_s: float | None = None,
) -> GcResult:
    """One stale-member pass: assess every member and remove at most one ripe, safe candidate.

    The member list and every started member's status come first; the cloud is asked only when
    :func:`cloud_evidence` names a reason (see the module doc), so an idle healthy cluster costs
    no AWS call.

    Args:
        client: client of the cluster.
        oracle: cloud truth.
        root: host root holding ``state_file``.
        state_file: host path of the gc state (first-seen times, known members).
        stale_grace_s, unstarted_grace_s: grace periods, seconds.
        self_id: our member ID (never removed here).
        dry_run: decide and report, remove nothing.
        clock: epoch-seconds clock (tests move time forward with it).
        status_timeout_s: per-member status timeout, seconds.
        going_away_grace_s: grace of the *going-away* condition (None = ``stale_grace_s``; a
            joiner passes 0).

    Raises:
        CloudTruthUnavailable: the oracle failed; nothing was decided or removed.
        EtcdError: the cluster did not answer (a removal refused by etcd's own guard after
            its retries, too).
    """
    _, members = client.member_list(linearizable=False)  # must work when quorum is lost
    statuses = collect_statuses(client, members, timeout_s=status_timeout_s)
    silent = {m.id for m in members if m.started and statuses.get(m.id) is None}
    old_seen, known = load_state(root, state_file)
    known = {k: v for k, v in known.items() if any(str(m.id) == k for m in members)}
    why = cloud_evidence(members, silent, known, old_seen, self_id)
    result = GcResult(evidence=why)
    if not why:
        save_state(root, state_file, {}, known)
        return result
    names = [m.name for m in members if m.name]
    ips = [m.peer_host for m in members if m.peer_host]
    log.debug("asking the cloud about etcd members: %s", "; ".join(why))
    try:
        instances = oracle.describe(names, ips)
    except HerdError:
        raise
    except Exception as exc:  # botocore raises many types; none of them may remove a member
        raise CloudTruthUnavailable(f"cannot ask the cloud about etcd members: {exc}") from exc
    result.asked_cloud = True
    for m in members:
        iid = confirmed_live(m, instances) if m.id not in silent and m.started else None
        if iid:
            known[str(m.id)] = iid
        else:
            known.pop(str(m.id), None)
    now = clock()
    seen, candidates = assess(members, instances, old_seen, now, stale_grace_s=stale_grace_s,
                              unstarted_grace_s=unstarted_grace_s, self_id=self_id, silent=silent,
                              going_away_grace_s=going_away_grace_s)
    save_state(root, state_file, seen, known)
    result.candidates = candidates
    ripe = [c for c in candidates if c.ripe]
    if not ripe:
        for c in candidates:
            log.info("etcd member %s (%s) looks stale (%s: %s) for %.0fs; waiting for its grace period",
                     member_id_hex(c.member.id), c.member.name or "unstarted", c.reason, c.evidence, now - c.since)
        return result
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
        known.pop(str(c.member.id), None)
        save_state(root, state_file, seen, known)
        result.removed, result.removed_verdict = c, verdict
        return result
    return result
