"""The join's steps, each a small named object run over a :class:`~herd_agent.join.context.JoinContext`.

The whole sequence is :data:`CONFIG_STEPS` then :data:`READY_STEPS` (see
:mod:`herd_agent.join.sequence` for the phases). A step says whether it applies (``applies``) and
does one thing (``run``); every step is idempotent, so a re-run resumes.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from herd_agent.discovery import control_plane
from herd_agent.host import hosts, kernel
from herd_agent.join import token as token_mod
from herd_agent.join.context import JoinContext
from herd_agent.join.founder import Claim, FounderClaims
from herd_agent.k3s import config as k3s_config
from herd_agent.k3s import service
from herd_agent.k3s.names import node_name
from herd_agent.k3s.tokens import AGENT_TOKEN_FILE, K3S_AGENT_TOKEN, K3S_SERVER_TOKEN, SERVER_CA_FILE, TOKEN_FILE, parse

log = logging.getLogger(__name__)


class Step(Protocol):
    """One step: a name (logs, journal), a role/mode filter, an idempotent action."""

    name: str

    def applies(self, ctx: JoinContext) -> bool: ...  # noqa: D102
    def run(self, ctx: JoinContext) -> None: ...  # noqa: D102


def _claims(ctx: JoinContext) -> FounderClaims:
    return FounderClaims(ctx.cfg, ctx.ident, ssm=ctx.clients("ssm"), ec2=ctx.clients("ec2"),
                         autoscaling=ctx.clients("autoscaling"))


def _tokens(ctx: JoinContext) -> token_mod.TokenStore:
    return token_mod.TokenStore(ctx.cfg, ctx.ident, client=ctx.clients(token_mod.service_of(ctx.cfg)))


def _my_kind(ctx: JoinContext) -> str:
    """The token this instance joins with: the server token on control planes, the agent token on workers."""
    return token_mod.SERVER if ctx.ident.is_control_plane else token_mod.AGENT


class Discover:
    """Choose the control plane to join through, and (control planes) decide founder vs joiner.

    A joiner waits for the cluster's secure token and pins the CA it names; a control plane that
    finds none healthy claims the next founder epoch (:mod:`herd_agent.join.founder`).
    """

    name = "discovery"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        if ctx.joined:
            log.info("already joined; endpoint %s (no EC2 lookup)", ctx.state.endpoint_ip)
            return False
        if ctx.state.founder and ctx.state.configured:
            log.info("resuming as the founder (claim epoch %s)", ctx.state.founder_epoch)
            return False  # a founder stays one: fencing (publish-tokens) stops it if it was superseded
        return True

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        store = _tokens(ctx)
        kind = _my_kind(ctx)

        def read() -> token_mod.JoinToken | None:
            value = store.fetch(kind)
            if value is not None:
                ctx.tokens[kind] = value
            return None if value is None else parse(value)

        def decide(**kwargs: object) -> control_plane.Endpoint:
            return control_plane.healthy_endpoint(ctx.ident, ctx.cfg, token=read, ec2=ctx.clients("ec2"),
                                                  check=ctx.check, **kwargs)  # type: ignore[arg-type]

        if ctx.ident.is_control_plane:
            try:
                first = decide(attempts=1)
                if first.ca_pem is not None:
                    self._joiner(ctx, first)
                    return
            except (control_plane.NoControlPlaneError, control_plane.CaMismatchError):
                planned = Claim(0, ctx.ident.instance_id, ctx.ident.private_ip, 0.0)  # epoch 0: "the next one"
                claim = ctx.act(f"ssm:PutParameter {_claims(ctx).prefix}/<next epoch> (Overwrite=False), "
                                "if the latest founder claim is stale or absent",
                                lambda: _claims(ctx).claim(), planned=planned)
                if claim is not None:
                    ctx.state.founder = True
                    ctx.state.founder_epoch = claim.epoch
                    ctx.state.endpoint_ip = ctx.ident.private_ip
                    ctx.endpoint = None
                    return
        try:
            found = decide(require_secure=not ctx.plan)
        except control_plane.NoControlPlaneError as exc:
            if exc.waiting_for_token and kind not in ctx.tokens:
                store.require(kind)  # MissingTokenError (66) names the parameter and the action
            raise
        self._joiner(ctx, found)

    @staticmethod
    def _joiner(ctx: JoinContext, found: control_plane.Endpoint) -> None:
        ctx.state.founder = False
        ctx.endpoint = found
        ctx.state.endpoint_ip = found.chosen.ip


class Hosts:
    """Point ``hosts.endpoint_name`` at the chosen control plane (the founder: at itself)."""

    name = "hosts"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return ctx.state.endpoint_ip is not None

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        hosts.sync(ctx.root, {k3s_config.endpoint_name(ctx.cfg, ctx.ident): str(ctx.state.endpoint_ip)})


class Kernel:
    """sysctl.d, modules-load.d and the systemd drop-ins, applied and read back."""

    name = "kernel"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return True

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        # /proc/sys is written outside HostRoot, so plan mode is passed on as dry_run here.
        report = kernel.apply(ctx.root, ctx.cfg, dry_run=ctx.plan, run=ctx.runner.run)
        if not report.ok:
            log.warning("kernel settings drift: %s missing: %s", report.drift, report.missing)


class Tokens:
    """Write the token files k3s reads, and the CA pinned from the secure token.

    Workers: the agent token only. Joining control planes: the server token (their ``token-file``)
    and the agent token (``agent-token-file``). The founder creates both (fresh ones when taking
    over from a failed founder).
    """

    name = "token"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return not (ctx.joined and ctx.root.exists(TOKEN_FILE))

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        store = _tokens(ctx)
        if ctx.state.founder:
            # Taking over from a failed founder: fresh tokens, once. A resumed founder (its token
            # file written) keeps the ones its k3s may already have bootstrapped with.
            replace = (ctx.state.founder_epoch or 1) > 1 and not ctx.root.exists(TOKEN_FILE)
            for kind, path in ((token_mod.SERVER, TOKEN_FILE), (token_mod.AGENT, AGENT_TOKEN_FILE)):
                value = ctx.act(f"{'ssm:PutParameter' if store.source == 'ssm' else 'secretsmanager:CreateSecret'} "
                                f"{store.name(kind)} (create the {kind} token"
                                f"{', replacing the failed founder' if replace else ' unless it exists'})",
                                lambda k=kind: store.create(k, replace=replace), planned="planned-token")
                token_mod.write_file(ctx.root, value, path)
            return
        kind = _my_kind(ctx)
        value = ctx.tokens.get(kind) or store.require(kind)
        token_mod.write_file(ctx.root, value, TOKEN_FILE)
        if ctx.ident.is_control_plane:
            token_mod.write_file(ctx.root, store.require(token_mod.AGENT), AGENT_TOKEN_FILE)
        if ctx.endpoint is not None and ctx.endpoint.ca_pem is not None:
            ctx.root.write(SERVER_CA_FILE, ctx.endpoint.ca_pem, mode=0o644)


ETCD_PEER_TRIES = 3
"""Control planes an external-etcd join tries, one after another, when the etcd it joins
through stops answering."""


class Etcd:
    """External etcd (control planes): found the cluster, or join as a learner and promote."""

    name = "etcd"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return ctx.ident.is_control_plane and ctx.cfg.get("etcd.mode") == "external"

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        from herd_agent.etcd.membership import Membership
        from herd_agent.etcd.settings import EtcdSettings
        from herd_agent.etcd.settings import Identity as EtcdIdentity

        settings = EtcdSettings.from_config(ctx.cfg, cluster=ctx.ident.cluster)
        if ctx.joined:
            return
        from herd_agent.etcd.pki import SecretsManagerCaStore

        me = Membership(ctx.root, settings, EtcdIdentity(ctx.ident.instance_id, ctx.ident.private_ip),
                        runner=ctx.runner, ca_store=SecretsManagerCaStore(settings.ca_secret, ctx.ident.region,
                                                                          client=ctx.clients("secretsmanager"),
                                                                          kms_key_id=ctx.cfg.get("kms.key_id")))
        if ctx.state.founder:
            ctx.act("etcd: found a new cluster", me.found)
            return
        from herd_agent.etcd.errors import EtcdUnreachable
        from herd_agent.etcd.gc import Ec2InstanceOracle

        # Only through a control plane discovery verified (its CA matched the token): another
        # tagged instance may run an etcd of its own (a failed founder's, or a rogue's).
        via = ctx.endpoint.chosen.ip if ctx.endpoint else str(ctx.state.endpoint_ip)
        oracle = Ec2InstanceOracle(ctx.ident.region, client=ctx.clients("ec2"), autoscaling=ctx.clients("autoscaling"))
        tried: list[str] = []
        while True:
            peers = [settings.client_url(via)]
            try:
                ctx.act(f"etcd: join as learner through {', '.join(peers)}, then promote",
                        lambda p=peers: me.join(p, oracle))  # type: ignore[misc]
                return
            except EtcdUnreachable as exc:
                # The control plane we came through may be leaving (a replacement boots while the
                # instance it replaces drains): its k3s answered discovery, then its etcd stopped
                # before our join reached it. Join through another verified one; the join is
                # resumable (it removes a half-added member of ours before adding again).
                tried.append(via)
                if len(tried) >= ETCD_PEER_TRIES:
                    raise
                log.warning("etcd at %s did not answer (%s); looking for another control plane to join through",
                            via, exc)
                via = self._another_control_plane(ctx, tried)

    @staticmethod
    def _another_control_plane(ctx: JoinContext, tried: list[str]) -> str:
        """A healthy control plane other than ``tried`` (IPs), verified against the CA the token
        step pinned (as :meth:`WaitReady.heal` does). Raises NoControlPlaneError or
        CaMismatchError (discovery's own errors)."""
        return control_plane.healthy_endpoint(ctx.ident, ctx.cfg, ca_pem=control_plane.pinned_ca(ctx.root),
                                              check=ctx.check, ec2=ctx.clients("ec2"), exclude=tried).chosen.ip


class K3sConfig:
    """Render and write the agent's k3s config drop-in."""

    name = "k3s-config"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return True

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        datastore = None
        if ctx.ident.is_control_plane and ctx.cfg.get("etcd.mode") == "external":
            from herd_agent.etcd.settings import EtcdSettings

            datastore = EtcdSettings.from_config(ctx.cfg, cluster=ctx.ident.cluster).client_url(ctx.ident.private_ip)
        conf = k3s_config.render(ctx.cfg, ctx.ident, founder=ctx.state.founder, datastore_endpoint=datastore)
        k3s_config.write(ctx.root, conf)
        ctx.state.configured = True
        ctx.save()


class StartK3s:
    """Enable the k3s unit (first join) and queue its start."""

    name = "k3s-start"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return True

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        if not ctx.joined:
            service.enable(ctx.runner, ctx.ident.is_control_plane)
        # Queued, not awaited: readiness is the Node turning Ready (the ready phase).
        ctx.status(f"starting {service.unit_for(ctx.ident.is_control_plane)}")
        service.start(ctx.runner, ctx.ident.is_control_plane)


class WaitReady:
    """Wait, bounded, for the Node to be Ready; meanwhile keep the endpoint on a healthy control plane."""

    name = "wait-ready"
    ENDPOINT_CHECK_S = 10.0

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return not ctx.state.ready

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        from herd_agent import kube

        node = node_name(ctx.cfg.get("k3s.node_name"), ctx.ident)
        make = ctx.kube_client or (lambda: kube.client(ctx.root, ctx.cfg, control_plane=ctx.ident.is_control_plane))
        next_check = [time.monotonic() + self.ENDPOINT_CHECK_S]

        def progress(line: str) -> None:
            ctx.notifier.status(line)
            if time.monotonic() >= next_check[0]:
                next_check[0] = time.monotonic() + self.ENDPOINT_CHECK_S
                self.heal(ctx)

        ctx.act(f"kubernetes: wait for Node {node} Ready (up to {ctx.cfg.get('join.ready_timeout_s')}s)",
                lambda: kube.wait_node_ready(make, node, ctx.cfg.get("join.ready_timeout_s"), progress=progress))
        if not ctx.plan:
            ctx.state.ready = True
            ctx.save()

    @staticmethod
    def heal(ctx: JoinContext) -> None:
        """If the control plane we join through stopped answering (replaced meanwhile), point
        /etc/hosts at a healthy one and restart k3s — what systemd's ``Restart=`` with the k3s
        drop-in's ``ExecStartPre=herd-agent hosts sync`` would do, without waiting for k3s to give up."""
        if ctx.state.founder or not ctx.state.endpoint_ip:
            return
        old = ctx.state.endpoint_ip
        ca = control_plane.pinned_ca(ctx.root)
        store = _tokens(ctx)
        chosen = control_plane.healthy_endpoint(
            ctx.ident, ctx.cfg, current=old, ca_pem=ca, check=ctx.check, ec2=ctx.clients("ec2"),
            token=lambda: store.read(_my_kind(ctx)), require_secure=ca is not None).chosen
        if chosen.ip == old:
            return
        log.warning("control plane %s stopped answering while we joined; switching to %s and restarting k3s",
                    old, chosen.ip)
        hosts.sync(ctx.root, {k3s_config.endpoint_name(ctx.cfg, ctx.ident): chosen.ip})
        ctx.state.endpoint_ip = chosen.ip
        ctx.save()
        service.restart(ctx.runner, ctx.ident.is_control_plane)


class PublishTokens:
    """Founder: publish the secure-format tokens k3s wrote, and pin our own CA.

    Fenced: only while our founder epoch is still the latest claim.
    """

    name = "publish-tokens"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        return ctx.state.founder and not ctx.state.hook_completed

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        store = _tokens(ctx)
        epoch = ctx.state.founder_epoch
        if epoch is not None:  # None: a founder journaled before claims had epochs
            ctx.act(f"ssm:GetParametersByPath {_claims(ctx).prefix} (fencing: epoch {epoch} still the latest)",
                    lambda: _claims(ctx).still_current(epoch))
        for kind, path in ((token_mod.SERVER, K3S_SERVER_TOKEN), (token_mod.AGENT, K3S_AGENT_TOKEN)):
            ctx.act(f"publish {path} to {store.name(kind)} (the secure {kind} token k3s wrote)",
                    lambda k=kind, p=path: store.publish(k, ctx.root.read_text(p).strip()))
        ca = ctx.root.read_text("/var/lib/rancher/k3s/server/tls/server-ca.crt", default="")
        if ca:
            ctx.root.write(SERVER_CA_FILE, ca, mode=0o644)


class CompleteLaunchHook:
    """Complete the launch lifecycle hook(s) with CONTINUE."""

    name = "launch-hook"

    def applies(self, ctx: JoinContext) -> bool:  # noqa: D102
        if ctx.state.ready and ctx.state.hook_completed:
            return False
        if not ctx.ident.asg_name:
            log.info("not in an Auto Scaling group; no launch hook to complete")
            return False
        return True

    def run(self, ctx: JoinContext) -> None:  # noqa: D102
        from herd_agent import lifecycle

        ident = ctx.ident
        for name in launch_hooks(ctx):
            ctx.act(f"autoscaling:CompleteLifecycleAction {name} CONTINUE",
                    lambda n=name: lifecycle.complete(ident.region, ident.asg_name, n, ident.instance_id, "CONTINUE"))
        if not ctx.plan:
            ctx.state.hook_completed = True
            ctx.save()


def launch_hooks(ctx: JoinContext) -> list[str]:
    """Names of the group's launch hooks: ``join.launch_hook_name``, or DescribeLifecycleHooks."""
    from herd_agent import lifecycle

    configured = ctx.cfg.get("join.launch_hook_name")
    if configured:
        return [configured]
    assert ctx.ident.asg_name
    return [h.name for h in lifecycle.hooks(ctx.ident.region, ctx.ident.asg_name, lifecycle.LAUNCHING)]


CONFIG_STEPS: tuple[Step, ...] = (Discover(), Hosts(), Kernel(), Tokens(), Etcd(), K3sConfig(), StartK3s())
"""The config phase, in order."""
READY_STEPS: tuple[Step, ...] = (WaitReady(), PublishTokens(), CompleteLaunchHook())
"""The ready phase, in order."""
