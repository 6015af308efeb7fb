"""The join: the step engine over :data:`~herd_agent.join.steps.CONFIG_STEPS` and
:data:`~herd_agent.join.steps.READY_STEPS`.

Phases (separate systemd units, as EKS nodeadm splits config and run):

- ``config`` (``herd-agent-join.service``, ordered before the k3s units): discovery and the
  founder decision → /etc/hosts → kernel → tokens → etcd (control planes, external mode) → k3s
  config → ``systemctl enable`` and a queued (``--no-block``) start of the k3s unit. It cannot
  wait for the Node itself: k3s is ordered after it and would not start until it exits.
- ``ready`` (``herd-agent-join-ready.service``, ordered after the k3s units): wait, bounded, for
  the Node to be Ready (progress in ``STATUS=``), publish the secure tokens (founder), then
  complete the launch lifecycle hook with CONTINUE.
- ``all`` (by hand): both.

Identity is read from IMDS before any step, so every step has it. A definite failure completes
the launch hook with ``join.failure_result`` (ABANDON by default) and exits non-zero with the
reason; a failing founder first stops k3s and releases its claim so another control plane can
found. Progress is journaled in ``/var/lib/herd-agent/join.json``; once the Node was Ready and the
hook completed, a re-run makes no AWS call beyond identity, rewrites no file and exits 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import read_identity
from herd_agent.discovery.imds import ImdsClient
from herd_agent.errors import HerdError
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.join.context import Clients, JoinContext, PlanRoot, PlanRunner, real_runner
from herd_agent.join.state import JoinState, load_state
from herd_agent.join.steps import CONFIG_STEPS, READY_STEPS, Step, launch_hooks
from herd_agent.k3s import service
from herd_agent.k3s.names import node_name
from herd_agent.logs import set_context, step

log = logging.getLogger(__name__)

PHASES = ("config", "ready", "all")


class JoinSequence:
    """One run of the join.

    Args:
        root: host root.
        cfg: effective config.
        imds: IMDS client (default from ``imds.*``).
        notifier: systemd notifier for ``STATUS=`` progress.
        plan: record what would change instead of changing it (``herd-agent plan join``): chooses
            the recording root, runner and :meth:`JoinContext.act`; the steps do not branch on it.
        healthy: control-plane health check override (tests).
        kube_client: ``() -> lightkube.Client`` override (tests).
        clients: AWS clients by service name (tests: Stubber-wrapped); others made on first use.
    """

    def __init__(
        self,
        root: HostRoot,
        cfg: Config,
        *,
        imds: ImdsClient | None = None,
        notifier: Notifier | None = None,
        plan: bool = False,
        healthy: Callable[[Any], bool] | None = None,
        kube_client: Callable[[], Any] | None = None,
        clients: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.plan, self.real_root = cfg, plan, root
        self.imds = imds or ImdsClient.from_config(cfg)
        self.notifier = notifier or Notifier()
        self.healthy, self.kube_client = healthy, kube_client
        self.given_clients = dict(clients or {})
        self.ctx: JoinContext | None = None

    def context(self) -> JoinContext:
        """Read identity and the journal, and build the context (plan mode picks the seams here)."""
        with step("identity"):
            ident = read_identity(self.imds, self.cfg)
        set_context(instance_id=ident.instance_id, cluster=ident.cluster)
        previous = load_state(self.real_root)
        if previous and previous.instance_id == ident.instance_id and previous.cluster == ident.cluster:
            state = previous
        else:
            state = JoinState(ident.instance_id, ident.cluster, ident.role)
        return JoinContext(
            ident=ident, cfg=self.cfg, state=state,
            root=PlanRoot(self.real_root) if self.plan else self.real_root,
            runner=PlanRunner() if self.plan else real_runner(),
            clients=Clients(ident.region, self.given_clients), notifier=self.notifier, plan=self.plan,
            kube_client=self.kube_client, check=self.healthy,
        )

    def run(self, phase: str = "all") -> JoinState:
        """Run ``phase`` (``config``, ``ready`` or ``all``).

        Raises:
            HerdError: a step failed for good (after the launch hook was completed with
                ``join.failure_result``); its exit code says which kind.
        """
        if phase not in PHASES:
            raise ValueError(f"unknown join phase {phase!r}")
        ctx = self.ctx = self.context()
        steps: list[Step] = []
        if phase in ("config", "all"):
            steps += CONFIG_STEPS
        if phase in ("ready", "all"):
            steps += READY_STEPS
        try:
            for s in steps:
                if s.applies(ctx):
                    with step(s.name):
                        s.run(ctx)
        except HerdError as exc:
            self._fail(ctx, exc)
            raise
        if phase in ("ready", "all"):
            ctx.status(f"joined cluster {ctx.ident.cluster} as {ctx.ident.role} "
                       f"{node_name(self.cfg.get('k3s.node_name'), ctx.ident)}")
        return ctx.state

    def _fail(self, ctx: JoinContext, exc: HerdError) -> None:
        """A definite failure: a founder stops k3s and releases its claim; then the launch hook
        is completed with ``join.failure_result``."""
        if ctx.plan:
            return
        ident = ctx.ident
        if ctx.state.founder and ctx.state.founder_epoch is not None:
            from herd_agent.join.founder import FounderClaims

            try:
                service.stop(ctx.runner, ident.is_control_plane)
                FounderClaims(self.cfg, ident, ssm=ctx.clients("ssm")).release(ctx.state.founder_epoch)
            except HerdError as release_exc:
                log.error("could not release the founder claim: %s", release_exc)
        if not ident.asg_name:
            return
        result = self.cfg.get("join.failure_result")
        log.error("join failed: %s; completing the launch hook with %s", exc, result)
        try:
            from herd_agent import lifecycle

            for name in launch_hooks(ctx):
                lifecycle.complete(ident.region, ident.asg_name, name, ident.instance_id, result)
        except HerdError as hook_exc:
            log.error("could not complete the launch hook: %s", hook_exc)

    # --- plan output ---------------------------------------------------------------------------
    def plan_report(self) -> str:
        """What a plan run found: file diffs, commands, API calls (empty sections omitted)."""
        ctx = self.ctx
        if ctx is None or not isinstance(ctx.root, PlanRoot) or not isinstance(ctx.runner, PlanRunner):
            raise RuntimeError("plan_report() needs a plan run")
        out = [f"files ({len(ctx.root.diffs)} would change):"]
        out += [d.rstrip("\n") for d in ctx.root.diffs] or ["  (none)"]
        cmds = ctx.runner.commands
        out.append(f"commands ({len(cmds)}):")
        out += [f"  {' '.join(c)}" for c in cmds] or ["  (none)"]
        out.append(f"API calls that change things ({len(ctx.planned)}):")
        out += [f"  {c}" for c in ctx.planned] or ["  (none)"]
        return "\n".join(out) + "\n"
