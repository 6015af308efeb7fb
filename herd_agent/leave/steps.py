"""The leave's steps, each a small named object over a :class:`~herd_agent.leave.context.LeaveContext`.

The whole sequence is :data:`STEPS`, in order. A step has a ``name`` (its journal key),
``applies(ctx)`` (whether it has a place in this instance's sequence: the two etcd steps sit at
different places for the two etcd modes), ``skip(ctx)`` (a reason to journal it skipped, or
None), ``run(ctx)`` (act; return a one-line detail; raise on failure) and ``describe(ctx)``
(what it would do, for ``plan leave``). Every ``run`` is idempotent: the engine replays a step
that was ``started`` but not journaled ``done`` after a crash, so a step
must accept that its action already happened (the Node already gone, the member already removed,
the lifecycle action already completed).
"""

from __future__ import annotations

import logging
from typing import Any

from herd_agent.leave.context import LeaveContext

log = logging.getLogger(__name__)

LEAVING_TAINT = {"key": "herd.io/leaving", "value": "true", "effect": "NoSchedule"}
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
IN_FLIGHT = {"evicting": "evicted", "blocked": "evicted", "deleting": "deleted"}


class Step:
    """One leave step (see the module docstring); subclasses set ``name`` and define ``run``."""

    name = ""

    def applies(self, ctx: LeaveContext) -> bool:
        """Whether the step has a place in this instance's sequence (default: yes)."""
        return True

    def skip(self, ctx: LeaveContext) -> str | None:
        """A reason to journal the step ``skipped`` without running it, or None (default)."""
        return None

    def describe(self, ctx: LeaveContext) -> str:
        """What the step would do here, one line (``plan leave``)."""
        raise NotImplementedError

    def run(self, ctx: LeaveContext) -> str:
        """Act (idempotently); a one-line detail for the journal. Raises on failure."""
        raise NotImplementedError


def _status(exc: Exception) -> int | None:
    return getattr(getattr(exc, "status", None), "code", None)


class Cordon(Step):
    """``spec.unschedulable``, the exclude-from-external-load-balancers label, the leaving taint."""

    name = "cordon"

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        return f"cordon Node {ctx.node}, label it out of external load balancers, taint it herd.io/leaving"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`."""
        return cordon(ctx.clients.kube(), ctx.node)


def cordon(kube: Any, node: str) -> str:
    """Cordon Node ``node`` through ``kube`` (lightkube): unschedulable, labelled
    ``node.kubernetes.io/exclude-from-external-load-balancers=true`` (Kubernetes well-known label),
    tainted ``herd.io/leaving=true:NoSchedule``. Idempotent; a missing Node is "already gone".

    Raises:
        lightkube.ApiError: any answer but 404.
    """
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Node
    from lightkube.types import PatchType

    try:
        current = kube.get(Node, node)
    except ApiError as exc:
        if _status(exc) == 404:
            return "skipped: the Node is already gone"
        raise
    taints = [t.to_dict() for t in (current.spec.taints or [])] if current.spec else []
    if not any(t.get("key") == LEAVING_TAINT["key"] for t in taints):
        taints.append(dict(LEAVING_TAINT))
    kube.patch(Node, node, {"metadata": {"labels": {EXCLUDE_LB_LABEL: "true"}},
                            "spec": {"unschedulable": True, "taints": taints}}, patch_type=PatchType.MERGE)
    return "cordoned, excluded from external load balancers, tainted herd.io/leaving"


class Drain(Step):
    """Evict every pod but DaemonSet and mirror pods against the budget (:mod:`herd_agent.drain`).

    Each round's outcomes are merged into the journal and saved, so a resumed drain keeps the
    pods evicted before a crash. When pods were force-deleted (budget spent) or never left, the
    report is a Warning naming each pod and the PodDisruptionBudget that held it.
    """

    name = "drain"

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        return f"drain Node {ctx.node} with policy/v1 Evictions, honouring PodDisruptionBudgets"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`."""
        from herd_agent.drain.budget import drain_budget
        from herd_agent.drain.engine import Drainer, DrainPolicy, KubeDrainApi

        journal = ctx.journal
        # Pods journaled as on their way out before a crash, and absent now, left: keep them so.
        budget = drain_budget(ctx.clock(), journal.deadline, float(ctx.cfg.get("leave.reserve_s")))

        def keep(outcomes: dict[str, Any]) -> None:
            for pod, o in outcomes.items():
                journal.pods[pod] = {"outcome": o.outcome, "detail": o.detail, "pdb": o.pdb, "forced": o.forced}
            ctx.save()

        drainer = Drainer(KubeDrainApi(ctx.clients.kube()), ctx.node, DrainPolicy.from_config(ctx.cfg), budget,
                          on_progress=ctx.notifier.status, on_round=keep)
        result = drainer.run()
        for pod, rec in journal.pods.items():
            if pod not in result.outcomes and rec.get("outcome") in IN_FLIGHT:
                rec["outcome"] = IN_FLIGHT[rec["outcome"]]  # it left while the agent was down
        ctx.save()
        blocked = result.blocked()
        forced = result.forced()
        evicted = sum(1 for p in journal.pods.values() if p["outcome"] in ("evicted", "gone"))
        message = (f"drained in {result.seconds:.1f}s: {evicted} evicted, {result.count('deleted')} deleted, "
                   f"{len(blocked)} did not leave on their own (budget {budget:.0f}s)")
        if blocked:
            held = "; ".join(f"{o.pod}" + (f" (PodDisruptionBudget {o.pdb})" if o.pdb else "")
                             + (" force-deleted" if o.forced else f" {o.outcome}") for o in blocked)
            message += f": {held}"
            for o in blocked:
                log.warning("pod %s: %s%s (%s)", o.pod, o.outcome, " (force-deleted)" if o.forced else "", o.detail)
        if forced:
            pdbs = sorted({o.pdb for o in forced if o.pdb})
            log.warning("drain budget spent: %d pod(s) force-deleted overriding PodDisruptionBudget(s) %s",
                        len(forced), ", ".join(pdbs) or "(none)")
        ctx.reporter.phase("HerdDrainIncomplete" if blocked else "HerdDrained", message, warning=bool(blocked))
        return message


class EtcdEmbedded(Step):
    """Control planes, embedded etcd: delete the Node (k3s' etcd finalizer removes the member),
    verify the member is gone, remove it directly if not."""

    name = "etcd"

    def applies(self, ctx: LeaveContext) -> bool:
        """See :meth:`Step.applies`."""
        return ctx.embedded_etcd

    def skip(self, ctx: LeaveContext) -> str | None:
        """See :meth:`Step.skip`."""
        return None if ctx.control_plane else "skipped: not a control plane"

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        return "leave k3s' embedded etcd (delete the Node, confirm the member is gone)"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`."""
        me, settings = _membership(ctx)
        own = f"https://{ctx.ident.private_ip}:{settings.client_port}"  # k3s' member: node IP and loopback
        result = me.leave_embedded([own, settings.embedded_client_url], lambda: DeleteNode().run(ctx))
        return f"left k3s' embedded etcd: {result}"


class DeleteNode(Step):
    """Delete our Node (404 is fine). k3s' node controller then drops the Node's
    ``<node>.node-password.k3s`` Secret itself, so the agent needs no Secret permission."""

    name = "delete-node"

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        return f"delete Node {ctx.node}"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`."""
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Node

        try:
            ctx.clients.kube().delete(Node, ctx.node)
        except ApiError as exc:
            if _status(exc) != 404:
                raise
            return f"Node {ctx.node} already gone"
        return f"Node {ctx.node} deleted"


class StopK3s(Step):
    """Stop k3s: ``k3s-killall.sh`` (its pods too), ``systemctl stop`` (pods keep running:
    ``KillMode=process``), or nothing, by ``leave.stop_k3s``. Both commands are idempotent."""

    name = "stop-k3s"

    def skip(self, ctx: LeaveContext) -> str | None:
        """See :meth:`Step.skip`."""
        return "skipped: leave.stop_k3s is none" if ctx.cfg.get("leave.stop_k3s") == "none" else None

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        from herd_agent.k3s.names import unit_for

        how = ctx.cfg.get("leave.stop_k3s")
        return "k3s-killall.sh" if how == "killall" else f"systemctl stop {unit_for(ctx.control_plane)}"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`."""

        from herd_agent.k3s import service

        runner = ctx.clients.runner()
        if ctx.stopping:
            # At shutdown k3s' stop job is already queued, ordered after the watcher: waiting for it
            # (systemctl stop, or k3s-killall.sh, which starts with one) deadlocks until the timeout
            # (seen under real systemd: 120 s). Queue it; systemd stops k3s once the watcher exits.
            unit = service.queue_stop(runner, ctx.control_plane)
            return f"queued the stop of {unit}: systemd stops it after the watcher exits (shutdown)"
        if ctx.cfg.get("leave.stop_k3s") == "killall":
            runner.run(["k3s-killall.sh"], timeout=120)
            return "k3s-killall.sh stopped k3s and its pods"
        unit = service.stop(runner, ctx.control_plane, timeout_s=120)
        return f"stopped {unit} (its pods keep running: KillMode=process)"


class EtcdExternal(Step):
    """Control planes, external etcd: quorum proof, leadership moved away, member removed and
    confirmed, etcd stopped, data dir rotated (:mod:`herd_agent.etcd`). After k3s stopped: the
    local API server lives on the local member."""

    name = "etcd"

    def applies(self, ctx: LeaveContext) -> bool:
        """See :meth:`Step.applies`."""
        return not ctx.embedded_etcd

    def skip(self, ctx: LeaveContext) -> str | None:
        """See :meth:`Step.skip`."""
        return None if ctx.control_plane else "skipped: not a control plane"

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        return "leave the external etcd cluster (quorum proof, move leadership, remove own member)"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`. The cluster's client URLs are journaled before anything changes:
        replayed after the member left (our etcd stopped, its data dir rotated), the step asks
        the other members, finds us gone, and finishes (stop and rotate are idempotent)."""
        me, settings = _membership(ctx)
        own = settings.client_url(ctx.ident.private_ip)
        if not ctx.journal.etcd_peers:
            _, members = me.client([own]).member_list()
            ctx.journal.etcd_peers = sorted({u for m in members for u in m.client_urls} | {own})
            ctx.save()
        peers = [own] + [u for u in ctx.journal.etcd_peers if u != own]
        return f"left etcd: {me.leave(peers)}"


def _membership(ctx: LeaveContext) -> tuple[Any, Any]:
    from herd_agent.etcd.membership import Membership
    from herd_agent.etcd.settings import EtcdSettings
    from herd_agent.etcd.settings import Identity as EtcdIdentity

    settings = EtcdSettings.from_config(ctx.cfg, cluster=ctx.ident.cluster)
    return Membership(ctx.root, settings, EtcdIdentity(ctx.node, ctx.ident.private_ip)), settings


class CompleteHook(Step):
    """Complete the terminating lifecycle action: CONTINUE, or ``leave.failure_result`` when a step
    failed. A failed call (throttled past botocore's attempts, 5xx, a transient AccessDenied) is
    retried with exponential backoff (0.5 s doubling to :attr:`BACKOFF_MAX_S`), heartbeats going
    on, until the leave's deadline or until the action is over; "No active Lifecycle Action" is
    done (the action completed already, e.g. before a crash, or timed out)."""

    name = "complete-hook"
    BACKOFF_MAX_S = 10.0

    def skip(self, ctx: LeaveContext) -> str | None:
        """See :meth:`Step.skip`."""
        return None if ctx.journal.hook else "skipped: no terminating lifecycle hook"

    def describe(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.describe`."""
        return "complete the terminating lifecycle action (CONTINUE)"

    def run(self, ctx: LeaveContext) -> str:
        """See :meth:`Step.run`."""
        import tenacity

        from herd_agent.aws import AwsError

        hook, journal = ctx.journal.hook, ctx.journal
        if hook is None:
            return "skipped: no terminating lifecycle hook"
        result = ctx.cfg.get("leave.failure_result") if ctx.failed else "CONTINUE"
        deadline = journal.deadline

        def give_up(state: tenacity.RetryCallState) -> bool:
            over = deadline is not None and ctx.clock() >= deadline
            return over or not ctx.heartbeats_alive()

        def note(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("CompleteLifecycleAction failed (attempt %d): %s; retrying", state.attempt_number, exc)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(AwsError), stop=give_up, reraise=True,
            wait=tenacity.wait_exponential(multiplier=0.5, max=self.BACKOFF_MAX_S), before_sleep=note)
        done = retrying(ctx.clients.lifecycle().complete, hook["group"], hook["name"], ctx.ident.instance_id,
                        result)
        journal.result = result
        return f"completed {result}" if done else f"no active lifecycle action (sent {result}); nothing to complete"


# The sequence, in order. The engine runs every step but the last in turn and the last one in a
# ``finally``: the lifecycle action is completed even when a step failed or the deadline came.
STEPS: tuple[Step, ...] = (
    Cordon(),
    Drain(),
    EtcdEmbedded(),   # control planes with embedded etcd: before the Node goes
    DeleteNode(),
    StopK3s(),
    EtcdExternal(),   # control planes with external etcd: after k3s stopped
    CompleteHook(),
)
