"""Join: this instance becomes a voter of an existing etcd cluster (external mode).

All under the cluster-wide :class:`~herd_agent.etcd.lock.MembershipLock`:

0. TLS: make sure our member certificate exists and is not due (it is our client certificate too).
1. Read the member list and the identity journal. If the journal, the data dir and the live
   membership agree (same cluster, our member ID present with our peer URL), this is a reboot:
   renew our certificate if due, (re)start the unit, promote if still a learner, and stop.
2. Otherwise stop our unit, remove every member that carries our name or our peer URL (an
   earlier incarnation of us, or a dead instance whose IP we inherited) unless it still answers,
   and rotate the data dir.
3. Stale-member passes from cloud truth (:func:`herd_agent.etcd.gc.gc_once`, one removal each)
   until one removes nothing. The joiner's passes take a member the cloud says is going away
   (Auto Scaling ``Terminating*``/``Terminated``/``Unhealthy``, EC2 ``shutting-down``/``terminated``)
   **and** that does not answer as ripe at once, with the usual quorum proof.
4. ``MemberAdd`` ourselves as a **learner**. etcd refuses any add with "unhealthy cluster" while a
   voter is not connected (``isConnectedFullySince`` over the voters, etcd's ``--strict-reconfig-check``):
   a dead voter blocks every joiner. So the add is tried in slices; after each refused slice the
   joiner runs another stale-member pass, which removes a dead going-away voter with quorum proof,
   and the next slice succeeds (:func:`add_learner`). Bounded by ``reconfig_retry_s``.
5. Write the env file with ``ETCD_INITIAL_CLUSTER`` from the
   member list the add returned and ``ETCD_INITIAL_CLUSTER_STATE=existing``, ``systemctl start``
   (it returns once etcd serves), wait until our raft index reaches the best of the existing
   members, ``MemberPromote`` (retrying "not in sync"). A failed start or promotion removes our
   learner again (it costs no vote; a leftover learner would block every other joiner).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from herd_agent.errors import HerdError
from herd_agent.etcd.client import EtcdClient, Member, MemberStatus, member_id_hex
from herd_agent.etcd.errors import (
    RETRYABLE,
    CloudTruthUnavailable,
    EtcdError,
    MemberIDRemoved,
    MemberNotFound,
    MemberNotLearner,
    MembershipError,
    UnhealthyCluster,
)
from herd_agent.etcd.gc import InstanceOracle, gc_once
from herd_agent.etcd.journal import data_dir_in_use, read_journal, rotate_data_dir
from herd_agent.etcd.lock import MembershipLock
from herd_agent.etcd.member import JoinResult, LocalMember
from herd_agent.etcd.quorum import render_initial_cluster
from herd_agent.etcd.status import member_status

log = logging.getLogger(__name__)

ADD_SLICE_S = 6.0
"""Seconds one learner-add attempt keeps retrying "unhealthy cluster" before the joiner looks
for a dead voter again: etcd's health interval (5 s) plus a little."""


def join(me: LocalMember, peers: Sequence[str], oracle: InstanceOracle | None = None) -> JoinResult:
    """Join the cluster behind ``peers`` (client URLs of other members) as a voter.

    Args:
        peers: client URLs of existing members.
        oracle: cloud truth for the stale-member passes (None skips them).

    Raises:
        LockTimeout: another change held the lock throughout ``lock_wait_s``.
        EtcdError: a reconfiguration failed after its retries.
        CommandError: ``systemctl`` failed.
        WaitTimeout: the learner did not catch up within ``start_timeout_s``.
        MembershipError: a live member carries our name or peer URL.
        PkiError: TLS is on and the cluster CA could not be read.
    """
    settings = me.settings
    renewed = me.ensure_certificates()  # our client certificate is what lets us talk to the cluster
    client = me.client([p for p in peers if p != me.client_url] or peers)
    client.sync_endpoints(exclude=[me.client_url])  # the peer we came through may leave meanwhile
    with me.lock(client) as lock:
        cluster_id, members = client.member_list()
        journal = read_journal(me.root, settings.data_dir)
        mine = me.mine(members)
        if (journal and journal.cluster_id == cluster_id and journal.state != "removed"
                and data_dir_in_use(me.root, settings.data_dir)
                and [m.id for m in mine] == [journal.member_id] and mine[0].started
                and me.peer_url in mine[0].peer_urls):
            log.info("etcd member %s and its data dir are intact; restarting it", member_id_hex(journal.member_id))
            me.systemctl("restart" if renewed else "start")
            if mine[0].is_learner:
                _catch_up_and_promote(me, client, mine[0].id, lock)
            me.journal(cluster_id, journal.member_id, "member")
            return JoinResult(cluster_id, journal.member_id, reused=True)

        removed: list[int] = []
        me.systemctl("stop")
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
        if data_dir_in_use(me.root, settings.data_dir):
            why = ("our member is gone from the cluster" if not journal or journal.cluster_id == cluster_id
                   else f"it belongs to cluster {member_id_hex(journal.cluster_id)}, not "
                        f"{member_id_hex(cluster_id)}")
            rotate_data_dir(me.root, settings.data_dir, why)
        if oracle is not None:
            removed += _gc_until_clean(me, client, oracle, lock)

        lock.check()
        added_at = time.monotonic()
        new, after = add_learner(me, client, oracle, lock, removed)
        me.journal(cluster_id, new.id, "adding")
        log.info("added etcd learner %s for %s", member_id_hex(new.id), me.identity.name)
        try:
            me.write_env(render_initial_cluster(after, me.identity.name, me.peer_url), "existing")
            me.systemctl("start")
            ready_at = time.monotonic()
            _catch_up_and_promote(me, client, new.id, lock)
        except BaseException:
            _undo_learner(me, client, new.id)
            raise
        done = time.monotonic()
        me.journal(cluster_id, new.id, "member")
        log.info("etcd member %s (%s) is a voter after %.2fs", member_id_hex(new.id), me.identity.name,
                 done - added_at)
        return JoinResult(cluster_id, new.id, join_s=done - added_at, catchup_s=done - ready_at,
                          removed=tuple(removed))


def add_learner(me: LocalMember, client: EtcdClient, oracle: InstanceOracle | None, lock: MembershipLock,
                removed: list[int]) -> tuple[Member, list[Member]]:
    """``MemberAdd`` ourselves as a learner, clearing a dead going-away voter while etcd refuses.

    Each slice retries "unhealthy cluster" for :data:`ADD_SLICE_S`; between slices a stale-member
    pass (going-away grace 0) runs under our lock, so a voter whose instance the cloud says is
    going away and that does not answer is removed with quorum proof during our own wait. IDs of
    members removed are appended to ``removed``.

    Raises:
        UnhealthyCluster: still refused after ``reconfig_retry_s``.
        LockLost: our lock expired meanwhile.
    """
    deadline = time.monotonic() + me.settings.reconfig_retry_s
    collisions = 0
    while True:
        lock.check()
        left = deadline - time.monotonic()
        try:
            return client.member_add([me.peer_url], learner=True, retry_s=max(0.0, min(ADD_SLICE_S, left)))
        except (MemberNotFound, MemberIDRemoved) as exc:
            # etcd derives a new member's ID from its peer URLs, the cluster and the current
            # *second*: re-adding the peer URL of a member removed within the same second collides
            # with the removed ID ("member not found" / "ID removed"). The next second works.
            collisions += 1
            if collisions == 3:
                raise
            log.info("member add collided with a just-removed member ID (%s); retrying next second", exc)
            time.sleep(1.05 - time.time() % 1.0)
        except UnhealthyCluster as exc:
            if time.monotonic() >= deadline:
                raise
            if oracle is None:
                continue
            log.info("etcd refuses our learner (%s); looking for a dead voter the cloud says is going away",
                     exc.etcd_message)
            removed += _gc_until_clean(me, client, oracle, lock)
        except RETRYABLE:  # too many learners, not enough started members: wait them out
            if time.monotonic() >= deadline:
                raise


def _gc_until_clean(me: LocalMember, client: EtcdClient, oracle: InstanceOracle, lock: MembershipLock) -> list[int]:
    settings = me.settings
    removed: list[int] = []
    for _ in range(16):
        lock.check()
        try:
            result = gc_once(client, oracle, me.root, state_file=settings.gc_state_file,
                             stale_grace_s=settings.stale_grace_s, unstarted_grace_s=settings.unstarted_grace_s,
                             going_away_grace_s=0.0, clock=me.clock)
        except CloudTruthUnavailable as exc:
            # Joining adds a learner, which costs no vote; etcd still refuses the add while a
            # dead voter is present, so skipping the cleanup cannot hurt quorum.
            log.warning("skipping the stale-member pass while joining: %s", exc)
            break
        if result.removed is None:
            break
        removed.append(result.removed.member.id)
    return removed


def _best_raft_index(client: EtcdClient) -> int | None:
    best = None
    for url in client.endpoints:
        try:
            index = client.status(url, timeout_s=2.0).raft_index
        except EtcdError:
            continue
        best = index if best is None else max(best, index)
    return best


def _undo_learner(me: LocalMember, client: EtcdClient, member_id: int) -> None:
    # A learner that never became a voter blocks the next joiner ("too many learner members");
    # removing it costs no vote. Best effort: a later join or gc removes it otherwise.
    try:
        _, members = client.member_list()
        if any(m.id == member_id and m.is_learner for m in members):
            log.warning("join failed; removing our learner %s again", member_id_hex(member_id))
            client.member_remove(member_id, retry_s=5)
            me.systemctl("stop")
    except (EtcdError, HerdError) as exc:
        log.warning("could not remove learner %s after a failed join: %s", member_id_hex(member_id), exc)


def _catch_up_and_promote(me: LocalMember, client: EtcdClient, member_id: int, lock: MembershipLock) -> None:
    target: list[int] = []  # the most advanced raft index among the existing members, read once

    def caught_up(own: MemberStatus) -> bool:
        if not target:
            best = _best_raft_index(client)
            if best is None:
                return False
            target.append(best)
        return own.member_id == member_id and own.raft_index >= target[0]

    me.wait_status(client, caught_up, f"(learner {member_id_hex(member_id)}) did not catch up")
    lock.check()
    try:
        client.member_promote(member_id)
    except MemberNotLearner:
        pass
