"""Join, found and leave: this instance's etcd membership.

**Join** (external mode), all under the cluster-wide :class:`~herd_agent.etcd.lock.MembershipLock`:

1. Read the member list and the identity journal. If the journal, the data dir and the live
   membership agree (same cluster, our member ID present with our peer URL), just (re)start the
   unit, promote if still a learner, and stop.
2. Otherwise stop our unit, remove every member that carries our name or our peer URL (an
   earlier incarnation of us, or a dead instance whose IP we inherited), and rotate the data dir.
3. Remove ripe stale members from cloud truth (:func:`herd_agent.etcd.gc.gc_once`, one at a time).
4. ``MemberAdd`` ourselves as a **learner**; write the env file with ``ETCD_INITIAL_CLUSTER`` from
   the member list the add returned and ``ETCD_INITIAL_CLUSTER_STATE=existing``.
5. ``systemctl start herd-etcd.service`` (through the runner; it returns once etcd serves),
   wait until our raft index reaches the leader's, ``MemberPromote`` (retrying "not in sync").

**Found** starts a new one-member cluster (``ETCD_INITIAL_CLUSTER_STATE=new``, itself only). The
caller decides founding (an atomic conditional write elsewhere).

**Leave** proves quorum from a fresh status of every voter, moves leadership away if we hold it
(to the most caught-up healthy voter), removes us through another member, confirms the removal
from another member, stops the unit and rotates the data dir. Embedded mode (k3s' etcd) deletes
the Node through a callable, waits for k3s to drop the member and removes it directly if it
does not.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from herd_agent.errors import ExitCode, HerdError
from herd_agent.etcd.client import (
    EtcdClient,
    EtcdError,
    Member,
    MemberIDRemoved,
    MemberNotFound,
    MemberNotLearner,
    member_id_hex,
)
from herd_agent.etcd.gc import CloudTruthUnavailable, GcResult, InstanceOracle, gc_once
from herd_agent.etcd.journal import (
    IdentityRecord,
    data_dir_in_use,
    read_journal,
    rotate_data_dir,
    write_journal,
)
from herd_agent.etcd.lock import MembershipLock
from herd_agent.etcd.quorum import (
    Verdict,
    healthy_voters,
    leader_of,
    most_caught_up,
    removal_verdict,
    render_initial_cluster,
)
from herd_agent.etcd.settings import EtcdSettings, Identity
from herd_agent.etcd.status import collect_statuses, member_status
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.runner import Runner, get_runner

log = logging.getLogger(__name__)


class MembershipError(HerdError):
    """A membership step could not be completed."""

    exit_code = ExitCode.FAILURE


class QuorumRefused(MembershipError):
    """Removing the member would break quorum; nothing was changed.

    Attributes:
        verdict: the proof that failed.
    """

    exit_code = ExitCode.TEMP_FAIL

    def __init__(self, message: str, verdict: Verdict) -> None:
        super().__init__(message)
        self.verdict = verdict


class WaitTimeout(MembershipError):
    """A bounded wait ran out (catch-up, leadership move, removal confirmation)."""

    exit_code = ExitCode.TIMEOUT


@dataclass(frozen=True)
class JoinResult:
    """What a join or found did.

    Attributes:
        cluster_id, member_id: our cluster and member.
        reused: the existing membership and data dir were kept (restart only).
        join_s: seconds from the learner add to the promotion (0 when reused/founded).
        catchup_s: seconds from etcd ready to the promotion.
        removed: IDs of members removed on the way (our stale entries and stale members).
    """

    cluster_id: int
    member_id: int
    reused: bool = False
    join_s: float = 0.0
    catchup_s: float = 0.0
    removed: tuple[int, ...] = ()


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


def render_env(settings: EtcdSettings, identity: Identity, initial_cluster: str, state: str) -> str:
    """The unit's environment file: one ``ETCD_<FLAG>=value`` line per etcd flag.

    Args:
        initial_cluster: ``--initial-cluster`` value (see :func:`render_initial_cluster`).
        state: ``new`` (founder) or ``existing`` (joiner).
    """
    client = settings.client_url(identity.ip)
    listen_client = [client]
    # An instance whose own address is a loopback address is already reachable locally there.
    if settings.listen_localhost and not ipaddress.ip_address(identity.ip).is_loopback:
        listen_client.append(f"{settings.scheme}://127.0.0.1:{settings.client_port}")
    env = {
        "ETCD_NAME": identity.name,
        "ETCD_DATA_DIR": settings.data_dir,
        "ETCD_LISTEN_PEER_URLS": settings.peer_url(identity.ip),
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": settings.peer_url(identity.ip),
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen_client),
        "ETCD_ADVERTISE_CLIENT_URLS": client,
        "ETCD_INITIAL_CLUSTER": initial_cluster,
        "ETCD_INITIAL_CLUSTER_STATE": state,
        "ETCD_INITIAL_CLUSTER_TOKEN": settings.cluster_token,
        "ETCD_STRICT_RECONFIG_CHECK": "true",
    }
    env.update(settings.extra_env)
    lines = ["# Written by herd-agent (etcd membership); read by herd-etcd.service. Do not edit."]
    lines += [f"{k}={v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


class Membership:
    """This instance's etcd membership.

    Args:
        root: host root (env file, data dir, journal, gc state).
        settings: etcd settings.
        identity: our member name and IP.
        runner: the agent's runner (``systemctl``); default the process-wide one.
        clock: epoch-seconds clock for the gc grace periods.
    """

    def __init__(self, root: HostRoot, settings: EtcdSettings, identity: Identity, *,
                 runner: Runner | None = None, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.settings = settings
        self.identity = identity
        self.runner = runner
        self.clock = clock

    # --- helpers ---------------------------------------------------------------------------

    @property
    def peer_url(self) -> str:
        """Our peer URL."""
        return self.settings.peer_url(self.identity.ip)

    @property
    def client_url(self) -> str:
        """Our client URL."""
        return self.settings.client_url(self.identity.ip)

    def client(self, endpoints: Sequence[str]) -> EtcdClient:
        """A client for ``endpoints`` with our TLS files and retry time."""
        return EtcdClient(list(endpoints), tls=self.settings.tls_files(self.root),
                          retry_s=self.settings.reconfig_retry_s)

    def _systemctl(self, verb: str) -> None:
        runner = self.runner or get_runner()
        timeout = self.settings.start_timeout_s + 30 if verb == "start" else 120
        runner.run(["systemctl", verb, self.settings.unit], timeout=timeout)

    def _write_env(self, initial_cluster: str, state: str) -> None:
        text = render_env(self.settings, self.identity, initial_cluster, state)
        self.root.write(self.settings.env_file, text, mode=0o640)

    def _lock(self, client: EtcdClient, wait_s: float | None = None) -> MembershipLock:
        return MembershipLock(client, self.settings.lock_key, self.identity.name, ttl_s=self.settings.lock_ttl_s,
                              wait_s=self.settings.lock_wait_s if wait_s is None else wait_s)

    def _mine(self, members: Sequence[Member]) -> list[Member]:
        return [m for m in members if m.name == self.identity.name or self.peer_url in m.peer_urls]

    def _journal(self, cluster_id: int, member_id: int, state: str) -> None:
        write_journal(self.root, self.settings.data_dir,
                      IdentityRecord(cluster_id, member_id, self.identity.name, self.peer_url, state))

    # --- found -------------------------------------------------------------------------------

    def found(self) -> JoinResult:
        """Start a new one-member cluster (or restart ours when the journal and data dir agree).

        Raises:
            CommandError: ``systemctl start`` failed.
            WaitTimeout: the member never reported a leader.
        """
        journal = read_journal(self.root, self.settings.data_dir)
        if journal and journal.state != "removed" and data_dir_in_use(self.root, self.settings.data_dir) \
                and journal.peer_url == self.peer_url:
            self._systemctl("start")
            return JoinResult(journal.cluster_id, journal.member_id, reused=True)
        if data_dir_in_use(self.root, self.settings.data_dir):
            rotate_data_dir(self.root, self.settings.data_dir, "founding a new cluster")
        self._write_env(f"{self.identity.name}={self.peer_url}", "new")
        self._systemctl("start")
        client = self.client([self.client_url])
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            try:
                status = client.status(self.client_url)
                if status.leader:
                    break
            except EtcdError:
                pass
            if time.monotonic() > deadline:
                raise WaitTimeout(f"new etcd cluster at {self.client_url} elected no leader")
            time.sleep(0.05)
        cluster_id, _ = client.member_list()
        self._journal(cluster_id, status.member_id, "member")
        log.info("founded etcd cluster %s as member %s", member_id_hex(cluster_id), member_id_hex(status.member_id))
        return JoinResult(cluster_id, status.member_id)

    # --- join -------------------------------------------------------------------------------

    def join(self, peers: Sequence[str], oracle: InstanceOracle | None = None) -> JoinResult:
        """Join the cluster behind ``peers`` (client URLs of other members) as a voter.

        Args:
            peers: client URLs of existing members.
            oracle: cloud truth for the stale-member pass (None skips it).

        Raises:
            LockTimeout: another change held the lock throughout ``lock_wait_s``.
            EtcdError: a reconfiguration failed after its retries.
            CommandError: ``systemctl`` failed.
            WaitTimeout: the learner did not catch up within ``start_timeout_s``.
        """
        client = self.client([p for p in peers if p != self.client_url] or peers)
        with self._lock(client) as lock:
            cluster_id, members = client.member_list()
            journal = read_journal(self.root, self.settings.data_dir)
            mine = self._mine(members)
            if (journal and journal.cluster_id == cluster_id and journal.state != "removed"
                    and data_dir_in_use(self.root, self.settings.data_dir)
                    and [m.id for m in mine] == [journal.member_id] and mine[0].started
                    and self.peer_url in mine[0].peer_urls):
                log.info("etcd member %s and its data dir are intact; restarting it",
                         member_id_hex(journal.member_id))
                self._systemctl("start")
                if mine[0].is_learner:
                    self._catch_up_and_promote(client, mine[0].id, lock)
                self._journal(cluster_id, journal.member_id, "member")
                return JoinResult(cluster_id, journal.member_id, reused=True)

            removed: list[int] = []
            self._systemctl("stop")
            for m in mine:
                lock.check()
                if member_status(client, m) is not None:  # ours is stopped, so this is someone else
                    raise MembershipError(
                        f"etcd member {member_id_hex(m.id)} (name {m.name!r}, {','.join(m.client_urls)}) carries "
                        f"our name or peer URL and is alive; refusing to remove it. Check the node names.")
                log.warning("removing etcd member %s (name %r, peers %s): it carries our name or peer URL, and "
                            "this instance now owns them (earlier incarnation or reused IP)",
                            member_id_hex(m.id), m.name, ",".join(m.peer_urls))
                try:
                    client.member_remove(m.id)
                except MemberNotFound:
                    pass
                removed.append(m.id)
            if data_dir_in_use(self.root, self.settings.data_dir):
                why = ("our member is gone from the cluster" if not journal or journal.cluster_id == cluster_id
                       else f"it belongs to cluster {member_id_hex(journal.cluster_id)}, not "
                            f"{member_id_hex(cluster_id)}")
                rotate_data_dir(self.root, self.settings.data_dir, why)
            if oracle is not None:
                removed += self._gc_until_clean(client, oracle, lock)

            lock.check()
            added_at = time.monotonic()
            new, after = self._add_learner(client)
            self._journal(cluster_id, new.id, "adding")
            log.info("added etcd learner %s for %s", member_id_hex(new.id), self.identity.name)
            try:
                self._write_env(render_initial_cluster(after, self.identity.name, self.peer_url), "existing")
                self._systemctl("start")
                ready_at = time.monotonic()
                self._catch_up_and_promote(client, new.id, lock)
            except BaseException:
                self._undo_learner(client, new.id)
                raise
            done = time.monotonic()
            self._journal(cluster_id, new.id, "member")
            log.info("etcd member %s (%s) is a voter after %.2fs", member_id_hex(new.id), self.identity.name,
                     done - added_at)
            return JoinResult(cluster_id, new.id, join_s=done - added_at, catchup_s=done - ready_at,
                              removed=tuple(removed))

    def _add_learner(self, client: EtcdClient) -> tuple[Member, list[Member]]:
        # etcd derives a new member's ID from its peer URLs, the cluster and the current *second*:
        # re-adding the peer URL of a member removed within the same second collides with the
        # removed ID, and etcd answers "member not found" / "ID removed". The next second works.
        for attempt in range(3):
            try:
                return client.member_add([self.peer_url], learner=True)
            except (MemberNotFound, MemberIDRemoved) as exc:
                if attempt == 2:
                    raise
                log.info("member add collided with a just-removed member ID (%s); retrying next second", exc)
                time.sleep(1.05 - time.time() % 1.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _best_raft_index(client: EtcdClient) -> int | None:
        best = None
        for url in client.endpoints:
            try:
                index = client.status(url, timeout_s=2.0).raft_index
            except EtcdError:
                continue
            best = index if best is None else max(best, index)
        return best

    def _undo_learner(self, client: EtcdClient, member_id: int) -> None:
        # A learner that never became a voter blocks the next joiner ("too many learner members");
        # removing it costs no vote. Best effort: a later join or gc removes it otherwise.
        try:
            _, members = client.member_list()
            if any(m.id == member_id and m.is_learner for m in members):
                log.warning("join failed; removing our learner %s again", member_id_hex(member_id))
                client.member_remove(member_id, retry_s=5)
                self._systemctl("stop")
        except (EtcdError, HerdError) as exc:
            log.warning("could not remove learner %s after a failed join: %s", member_id_hex(member_id), exc)

    def _gc_until_clean(self, client: EtcdClient, oracle: InstanceOracle, lock: MembershipLock) -> list[int]:
        removed: list[int] = []
        for _ in range(16):
            lock.check()
            try:
                result = gc_once(client, oracle, self.root, state_file=self.settings.gc_state_file,
                                 stale_grace_s=self.settings.stale_grace_s,
                                 unstarted_grace_s=self.settings.unstarted_grace_s, clock=self.clock)
            except CloudTruthUnavailable as exc:
                # Joining adds a learner, which costs no vote; etcd still refuses the add while a
                # dead voter is present, so skipping the cleanup cannot hurt quorum.
                log.warning("skipping the stale-member pass before joining: %s", exc)
                break
            if result.removed is None:
                break
            removed.append(result.removed.member.id)
        return removed

    def _catch_up_and_promote(self, client: EtcdClient, member_id: int, lock: MembershipLock) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        target = None
        while True:
            try:
                if target is None:  # the most advanced index among the existing members
                    target = self._best_raft_index(client)
                own = client.status(self.client_url, timeout_s=2.0)
                if target is not None and own.member_id == member_id and own.raft_index >= target:
                    break
            except EtcdError:
                pass
            if time.monotonic() > deadline:
                raise WaitTimeout(f"etcd learner {member_id_hex(member_id)} did not catch up within "
                                  f"{self.settings.start_timeout_s:.0f}s")
            time.sleep(0.05)
        lock.check()
        try:
            client.member_promote(member_id)
        except MemberNotLearner:
            pass

    # --- gc ------------------------------------------------------------------------------------

    def gc(self, peers: Sequence[str], oracle: InstanceOracle, *, dry_run: bool = False) -> GcResult:
        """One stale-member pass under the membership lock (for the watcher and ``etcd gc``).

        Returns:
            :class:`herd_agent.etcd.gc.GcResult`.
        """
        client = self.client(peers)
        journal = read_journal(self.root, self.settings.data_dir)
        with self._lock(client):
            return gc_once(client, oracle, self.root, state_file=self.settings.gc_state_file,
                           stale_grace_s=self.settings.stale_grace_s,
                           unstarted_grace_s=self.settings.unstarted_grace_s,
                           self_id=journal.member_id if journal else None, dry_run=dry_run, clock=self.clock)

    # --- leave ----------------------------------------------------------------------------------

    def _find_self(self, members: Sequence[Member]) -> Member | None:
        journal = read_journal(self.root, self.settings.data_dir)
        for m in members:
            if journal and m.id == journal.member_id:
                return m
        mine = self._mine(members)
        return mine[0] if mine else None

    def leave(self, peers: Sequence[str]) -> LeaveResult:
        """Remove ourselves quorum-safely, then stop etcd and rotate the data dir (external mode).

        Args:
            peers: client URLs of the cluster (ours may be among them).

        Raises:
            QuorumRefused: removing us would break quorum (nothing changed; etcd still runs).
            WaitTimeout: leadership did not move or the removal was not confirmed in time.
            EtcdError: the cluster did not answer.
        """
        result = self._leave(peers)
        self._systemctl("stop")
        if data_dir_in_use(self.root, self.settings.data_dir):
            rotate_data_dir(self.root, self.settings.data_dir, "this member left the cluster")
        return result

    def leave_embedded(self, peers: Sequence[str], delete_node: Callable[[], None]) -> LeaveResult:
        """Leave k3s' embedded etcd: delete the Node (k3s removes the member), verify, fall back.

        Args:
            peers: client URLs of the cluster.
            delete_node: deletes our Kubernetes Node object (k3s' etcd finalizer removes the member).

        Raises:
            QuorumRefused, WaitTimeout, EtcdError: as :meth:`leave`, from the fallback removal.
        """
        client = self.client(peers)
        _, members = client.member_list()
        me = self._find_self(members)
        if me is None:
            log.info("etcd member for %s is already gone", self.identity.name)
            delete_node()
            return LeaveResult(0, False)
        delete_node()
        others = self._other_endpoints(members, me.id) or list(peers)
        if self._wait_gone(client.with_endpoints(others), me.id, self.settings.embedded_removal_wait_s):
            log.info("k3s removed etcd member %s after the Node was deleted", member_id_hex(me.id))
            return LeaveResult(me.id, True)
        log.warning("etcd member %s is still present %.0fs after the Node was deleted; removing it directly",
                    member_id_hex(me.id), self.settings.embedded_removal_wait_s)
        return self._leave(peers)

    @staticmethod
    def _other_endpoints(members: Sequence[Member], self_id: int) -> list[str]:
        return [u for m in members if m.id != self_id and m.is_voter for u in m.client_urls]

    def _wait_gone(self, client: EtcdClient, member_id: int, timeout_s: float) -> bool:
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

    def _leave(self, peers: Sequence[str]) -> LeaveResult:
        client = self.client(list(peers) + [self.client_url])
        cluster_id, members = client.member_list()
        me = self._find_self(members)
        if me is None:
            log.info("etcd member for %s is not in the cluster; nothing to remove", self.identity.name)
            return LeaveResult(0, False)
        others = self._other_endpoints(members, me.id)
        if not others:
            raise QuorumRefused("refusing to remove the last etcd voter", Verdict(False, "last voter", {}))
        other_client = client.with_endpoints(others)
        with self._lock(other_client, wait_s=self.settings.leave_timeout_s) as lock:
            started = time.monotonic()
            _, members = other_client.member_list()
            me = next((m for m in members if m.id == me.id), None)
            if me is None:
                return LeaveResult(0, False)
            statuses = collect_statuses(other_client, members)
            healthy = healthy_voters(members, statuses)
            verdict = removal_verdict(members, healthy, me.id, allow_two_to_one=True)
            proof = {member_id_hex(mid): (s.raft_index if s else None) for mid, s in statuses.items()}
            if not verdict.ok:
                log.error("not leaving etcd: %s (raft indexes %s)", verdict.reason, proof)
                raise QuorumRefused(f"leaving would break etcd quorum: {verdict.reason}", verdict)
            log.info("etcd leave proof: %s; raft indexes %s", verdict.reason, proof)
            moved_to = 0
            if leader_of(statuses) == me.id and me.is_voter:
                moved_to = self._move_leadership(other_client, me, members, statuses, healthy)
            lock.check()
            try:
                other_client.member_remove(me.id)
            except MemberNotFound:
                pass
            confirm = other_client.with_endpoints(
                [u for m in members if m.id not in (me.id,) and m.id in healthy for u in m.client_urls] or others)
            if not self._wait_gone(confirm, me.id, self.settings.leave_timeout_s):
                raise WaitTimeout(f"removal of etcd member {member_id_hex(me.id)} not confirmed by another member")
            elapsed = time.monotonic() - started
        self._journal(cluster_id, me.id, "removed")
        log.info("etcd member %s (%s) removed and confirmed in %.2fs", member_id_hex(me.id), self.identity.name,
                 elapsed)
        return LeaveResult(me.id, True, moved_to, verdict, elapsed)

    def _move_leadership(self, client: EtcdClient, me: Member, members: Sequence[Member],
                         statuses: dict, healthy: set[int]) -> int:
        target = most_caught_up(statuses, healthy - {me.id})
        if target is None:
            raise QuorumRefused("no healthy voter to take over etcd leadership",
                                Verdict(False, "no leadership target", {}))
        by_id = {m.id: m for m in members}
        log.info("moving etcd leadership from %s to %s", member_id_hex(me.id), member_id_hex(target))
        deadline = time.monotonic() + self.settings.leave_timeout_s
        while True:
            try:
                for url in me.client_urls:
                    client.transfer_leadership(url, target)
                    break
            except EtcdError as exc:
                log.info("leadership transfer not done yet: %s", exc)
            s = member_status(client, by_id[target])
            if s is not None and s.leader and s.leader != me.id:
                return s.leader
            if time.monotonic() > deadline:
                raise WaitTimeout(f"etcd leadership did not move off {member_id_hex(me.id)}")
            time.sleep(0.05)
