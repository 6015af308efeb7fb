"""The leave sequence: what callers use.

The parts (each its own module):

- :mod:`.steps` — the steps, listed in order in :data:`~herd_agent.leave.steps.STEPS`: cordon,
  drain, etcd (embedded mode), delete-node, stop-k3s, etcd (external mode), complete-hook;
- :mod:`.engine` — runs them under the journal (:mod:`.journal`), with failpoints and the deadline;
- :mod:`.context` — what a step sees: identity (read before the first step), config, journal,
  clients, reporter, plan mode;
- :mod:`.report` — Events, webhook, metrics; :mod:`.heartbeat` — the lifecycle-hook heartbeats;
  :mod:`.credentials` — the Kubernetes credential.

Public API (the watcher and the CLI use only these):

- ``LeaveSequence(root, cfg, imds=..., notifier=..., stopping=...).run(LeaveRequest(...))`` runs a
  new leave, or ``run(None)`` resumes the journaled one;
- ``LeaveSequence(...).cordon()`` cordons the Node only (the watcher's ``cordon`` reaction to a
  rebalance recommendation or scheduled maintenance): no journal, no drain;
- ``LeaveSequence(...).plan()`` lists the steps that would run here and what each would do.

The deadline is the earliest of the request's (spot notice, stop timeout), ``leave.deadline_s``
and the hook's global timeout (min(48 h, 100 × heartbeat timeout) from the action's start, EC2
Auto Scaling docs). The hook is heartbeaten (:mod:`.heartbeat`) for as long as the sequence runs,
including while the lifecycle action's completion is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity, read_identity
from herd_agent.discovery.imds import ImdsClient
from herd_agent.drain.budget import global_timeout_s
from herd_agent.errors import HerdError
from herd_agent.failpoints import scaled
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.k3s.names import node_name
from herd_agent.leave import journal as jr
from herd_agent.leave.context import LeaveClients, LeaveContext
from herd_agent.leave.credentials import make_kube_client
from herd_agent.leave.engine import StepEngine
from herd_agent.leave.heartbeat import Heartbeater, interval_for
from herd_agent.leave.report import LeaveReporter
from herd_agent.leave.steps import STEPS
from herd_agent.leave.steps import cordon as cordon_node
from herd_agent.logs import set_context

__all__ = ["LeaveRequest", "LeaveSequence", "make_kube_client"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaveRequest:
    """Why and by when: ``reason``, ``deadline`` (epoch seconds or None), whether to complete the hook."""

    reason: str
    deadline: float | None = None
    complete_hook: bool = True


class LeaveSequence:
    """Run (or resume) the leave, cordon only, or plan.

    Args:
        root: host root.
        cfg: effective config.
        imds: IMDS client (identity).
        notifier: systemd notifier (STATUS, EXTEND_TIMEOUT_USEC while stopping).
        kube_factory: ``(identity) -> lightkube.Client`` (default :func:`make_kube_client`).
        lifecycle_factory: ``(identity) -> LifecycleHooks`` (default the region's Auto Scaling client).
        runner_factory: ``() -> Runner`` (default the process-wide runner).
        stopping: the service manager is stopping us (extend the stop timeout while working).
        clock: epoch seconds.
    """

    def __init__(self, root: HostRoot, cfg: Config, *, imds: ImdsClient | None = None,
                 notifier: Notifier | None = None, kube_factory: Callable[[Identity], Any] | None = None,
                 lifecycle_factory: Callable[[Identity], Any] | None = None,
                 runner_factory: Callable[[], Any] | None = None,
                 stopping: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.cfg = cfg
        self.imds = imds or ImdsClient.from_config(cfg)
        self.notifier = notifier or Notifier()
        self.kube_factory = kube_factory or (lambda ident: make_kube_client(root, cfg, ident))
        self.lifecycle_factory = lifecycle_factory or _region_lifecycle
        self.runner_factory = runner_factory or _process_runner
        self.stopping = stopping
        self.clock = clock

    # --- public entries ----------------------------------------------------------------------------
    def cordon(self, ident: Identity | None = None) -> str:
        """Cordon our Node only (no journal, no drain). ``ident`` saves an IMDS read when known.

        Raises:
            HerdError, lightkube.ApiError: no credential, or the API refused.
        """
        ident = ident or read_identity(self.imds, self.cfg)
        return cordon_node(self.kube_factory(ident), node_name(self.cfg.get("k3s.node_name"), ident))

    def plan(self, ident: Identity | None = None) -> list[tuple[str, str]]:
        """``(step, what it would do)`` for every step that would run on this instance (changes nothing)."""
        ident = ident or read_identity(self.imds, self.cfg)
        journal = jr.LeaveJournal(reason="plan", started_at=self.clock())
        ctx = self.context(ident, journal, plan=True)
        journal.hook = {"name": "(the group's terminating hook)", "group": ident.asg_name or ""} \
            if ident.asg_name else None
        return StepEngine(ctx, STEPS).plan()

    def run(self, request: LeaveRequest | None) -> jr.LeaveJournal:
        """Run a new leave for ``request``, or resume the journaled one (``request`` may be None then).

        Raises:
            LeaveBusy: another leave holds the lock.
            HerdError: nothing to resume and no request.
        """
        with jr.LeaveLock(self.root):
            journal = jr.load(self.root)
            ended = journal is not None and journal.ended
            if journal is None or (ended and request is not None):
                if request is None:
                    raise HerdError("no leave to resume (no unfinished /var/lib/herd-agent/leave.json)")
                journal = self._new_journal(request)
            elif ended:
                return journal
            else:
                log.info("resuming the %s leave started at %s", journal.reason, time.ctime(journal.started_at))
            ident = read_identity(self.imds, self.cfg)
            set_context(instance_id=ident.instance_id, cluster=ident.cluster)
            ctx = self.context(ident, journal)
            if journal.finished:  # killed after the last step, before the end was written
                journal.finished_at = self.clock()
                ctx.reporter.finished()
                ctx.save()
                return journal
            self._find_hook(ctx)
            beats = self._heartbeats(ctx)
            try:
                ctx.reporter.started()
                StepEngine(ctx, STEPS).run()
            finally:
                if beats is not None:
                    beats.stop()
                journal.finished_at = self.clock()
                ctx.reporter.finished()  # metrics and webhook first: a finished journal means all is written
                ctx.save()
            return journal

    def _cordon(self) -> str:
        """Deprecated: :meth:`cordon`. The watcher on main still sets ``seq.ident`` and calls this."""
        return self.cordon(getattr(self, "ident", None))

    # --- parts ----------------------------------------------------------------------------------------
    def _new_journal(self, request: LeaveRequest) -> jr.LeaveJournal:
        deadline = request.deadline
        if self.cfg.get("leave.deadline_s") is not None:
            own = self.clock() + float(self.cfg.get("leave.deadline_s"))
            deadline = own if deadline is None else min(deadline, own)
        journal = jr.LeaveJournal(reason=request.reason, started_at=self.clock(), deadline=deadline)
        if not request.complete_hook:
            journal.steps["complete-hook"].status = "skipped"
            journal.steps["complete-hook"].detail = "skipped: not a termination"
        jr.save(self.root, journal)
        return journal

    def context(self, ident: Identity, journal: jr.LeaveJournal, *, plan: bool = False) -> LeaveContext:
        """The context the steps run over (tools and tests that run one step use it too)."""
        node = node_name(self.cfg.get("k3s.node_name"), ident)
        clients = LeaveClients(kube=lambda: self.kube_factory(ident),
                               lifecycle=lambda: self.lifecycle_factory(ident), runner=self.runner_factory)
        no_kube: list[Exception] = []

        def kube_for_events() -> Any:
            if no_kube:
                return None
            try:
                return clients.kube()
            except Exception as exc:  # no client: no Events, the leave goes on
                log.debug("no Kubernetes client for events: %s", exc)
                no_kube.append(exc)
                return None

        reporter = LeaveReporter(self.root, self.cfg, node, ident, journal, kube_for_events,
                                 self.notifier.status, self.clock)
        return LeaveContext(root=self.root, cfg=self.cfg, ident=ident, node=node, journal=journal, clients=clients,
                            reporter=reporter, notifier=self.notifier, save=lambda: jr.save(self.root, journal),
                            clock=self.clock, plan=plan, stopping=self.stopping)

    def _find_hook(self, ctx: LeaveContext) -> None:
        from herd_agent import lifecycle

        journal, ident = ctx.journal, ctx.ident
        if journal.hook is not None or not ident.asg_name or journal.steps["complete-hook"].status == "skipped":
            return
        try:
            hooks = ctx.clients.lifecycle().hooks(ident.asg_name, lifecycle.TERMINATING)
        except HerdError as exc:
            log.warning("could not read the group's lifecycle hooks: %s", exc)
            return
        if not hooks:
            return
        hook = hooks[0]
        journal.hook = {"name": hook.name, "group": ident.asg_name,
                        "heartbeat_timeout_s": hook.heartbeat_timeout_s, "global_timeout_s": hook.global_timeout_s}
        hook_deadline = journal.started_at + scaled(global_timeout_s(hook.heartbeat_timeout_s))
        journal.deadline = hook_deadline if journal.deadline is None else min(journal.deadline, hook_deadline)
        ctx.save()

    def _heartbeats(self, ctx: LeaveContext) -> Heartbeater | None:
        hook = ctx.journal.hook
        if not hook or ctx.journal.steps["complete-hook"].status != "pending" and \
                ctx.journal.steps["complete-hook"].status != "started":
            return None
        on_beat = self.notifier.extend_timeout if self.stopping else None
        beats = Heartbeater(ctx.clients.lifecycle, hook, ctx.ident.instance_id,
                            interval_for(hook, self.cfg.get("leave.heartbeat_interval_s")),
                            on_beat=(lambda i: on_beat(i * 2)) if on_beat else None).start()
        ctx.heartbeats_alive = lambda: beats.alive
        return beats


def _region_lifecycle(ident: Identity) -> Any:
    from herd_agent.lifecycle import LifecycleHooks

    return LifecycleHooks.for_region(ident.region)


def _process_runner() -> Any:
    from herd_agent.host import runner

    return runner.get_runner()
