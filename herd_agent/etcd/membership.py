"""This instance's etcd membership: the facade the join, leave and watcher flows call.

Each operation lives in its own module over the shared state of
:class:`~herd_agent.etcd.member.LocalMember`:

- :mod:`herd_agent.etcd.found` — start a new one-member cluster (the caller decided founding);
- :mod:`herd_agent.etcd.join` — learner add under the lock, stale-member passes, promote;
- :mod:`herd_agent.etcd.leave` — quorum proof, leadership move, self-removal (and embedded mode);
- :mod:`herd_agent.etcd.gc` — the stale-member pass (``Membership.gc``: the watcher's periodic
  pass, which also renews our TLS certificate when due).

Errors are in :mod:`herd_agent.etcd.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from herd_agent.errors import HerdError
from herd_agent.etcd import found as found_op
from herd_agent.etcd import join as join_op
from herd_agent.etcd import leave as leave_op
from herd_agent.etcd.gc import GcResult, InstanceOracle, gc_once
from herd_agent.etcd.journal import read_journal
from herd_agent.etcd.leave import LeaveResult
from herd_agent.etcd.member import JoinResult, LocalMember

log = logging.getLogger(__name__)


class Membership(LocalMember):
    """This instance's etcd membership (arguments: see :class:`~herd_agent.etcd.member.LocalMember`)."""

    def found(self) -> JoinResult:
        """See :func:`herd_agent.etcd.found.found`."""
        return found_op.found(self)

    def join(self, peers: Sequence[str], oracle: InstanceOracle | None = None) -> JoinResult:
        """See :func:`herd_agent.etcd.join.join`."""
        return join_op.join(self, peers, oracle)

    def leave(self, peers: Sequence[str]) -> LeaveResult:
        """See :func:`herd_agent.etcd.leave.leave`."""
        return leave_op.leave(self, peers)

    def leave_embedded(self, peers: Sequence[str], delete_node: Callable[[], None]) -> LeaveResult:
        """See :func:`herd_agent.etcd.leave.leave_embedded`."""
        return leave_op.leave_embedded(self, peers, delete_node)

    def gc(self, peers: Sequence[str], oracle: InstanceOracle, *, dry_run: bool = False) -> GcResult:
        """One stale-member pass under the membership lock (for the watcher and ``etcd gc``).

        With TLS (external mode) the pass first renews our member certificate when less than a
        third of its lifetime is left (:meth:`renew_certificates`), so the watcher's periodic
        pass keeps certificates fresh without any AWS call until one is due.

        Returns:
            :class:`herd_agent.etcd.gc.GcResult`.
        """
        if self.ca_store is None and self.settings.member_tls:
            from herd_agent.etcd.pki import SecretsManagerCaStore

            # Only read when a renewal is due; the region is the oracle's (the watcher's IMDS region).
            self.ca_store = SecretsManagerCaStore(self.settings.ca_secret, region=getattr(oracle, "region", None))
        client = self.client(peers)
        journal = read_journal(self.root, self.settings.data_dir)
        with self.lock(client):
            if not dry_run:
                try:
                    self.renew_certificates()
                except HerdError as exc:  # the stale-member pass must not wait on Secrets Manager
                    log.warning("could not renew this etcd member's certificate: %s", exc)
            return gc_once(client, oracle, self.root, state_file=self.settings.gc_state_file,
                           stale_grace_s=self.settings.stale_grace_s,
                           unstarted_grace_s=self.settings.unstarted_grace_s,
                           self_id=journal.member_id if journal else None, dry_run=dry_run, clock=self.clock)

    def renew_certificates(self) -> bool:
        """Renew our member certificate when due and restart our member with it (external mode, TLS).

        Call under the membership lock: one member restarts at a time, and the lock is released
        only after it serves again with a leader, so renewals never cost more than one voter.
        k3s (``systemctl try-restart k3s.service``) restarts too, as it reads its datastore client
        certificate only when it starts.

        Returns:
            True when the certificate was renewed and the member restarted.
        """
        if not self.settings.member_tls or read_journal(self.root, self.settings.data_dir) is None:
            return False
        if not self.ensure_certificates():
            return False
        log.warning("renewed this etcd member's TLS certificate; restarting %s", self.settings.unit)
        self.systemctl("restart")
        self.wait_serving(self.client([self.client_url]))
        # k3s reads its datastore client certificate (the member certificate) when it starts:
        # restart it if it runs, still under the lock, so it presents the renewed one.
        from herd_agent.host.runner import get_runner
        from herd_agent.k3s.names import SERVER_UNIT

        (self.runner or get_runner()).run(["systemctl", "try-restart", SERVER_UNIT], timeout=120)
        return True
