"""The join sequence, step by step, each step idempotent.

Phases (separate systemd units, as EKS nodeadm splits config and run):

- ``config`` (``herd-agent-join.service``, ordered before the k3s units): identity → discovery
  and the founder decision → /etc/hosts → kernel → token → etcd (control planes, external mode)
  → k3s config → ``systemctl enable`` and a queued (``--no-block``) start of the k3s unit. It
  cannot wait for the Node itself: k3s is ordered after it and would not start until it exits.
- ``ready`` (``herd-agent-join-ready.service``, ordered after the k3s units): wait, bounded, for
  the Node to be Ready through the Kubernetes API (progress in ``STATUS=``), then complete the
  launch lifecycle hook with CONTINUE.
- ``all`` (by hand): both.

A definite failure completes the launch hook with ``join.failure_result`` (ABANDON by default)
and exits non-zero with the reason. Progress is journaled in ``/var/lib/herd-agent/join.json``;
once the Node was Ready and the hook completed, a re-run makes no AWS call beyond identity,
rewrites no file and exits 0.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery import control_plane
from herd_agent.discovery.identity import Identity, read_identity
from herd_agent.discovery.imds import ImdsClient
from herd_agent.errors import HerdError
from herd_agent.host import runner as runner_mod
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.host.runner import Result, Runner
from herd_agent.join import founder as founder_mod
from herd_agent.join import hosts, k3s_config, kernel, token
from herd_agent.join.state import JoinState, load_state, save_state
from herd_agent.k3s.names import node_name, unit_for
from herd_agent.logs import set_context, step

log = logging.getLogger(__name__)

PHASES = ("config", "ready", "all")


class PlanRoot(HostRoot):
    """A HostRoot that records what would be written (as unified diffs) and writes nothing."""

    def __init__(self, root: HostRoot) -> None:
        super().__init__(root.root)
        self.diffs: list[str] = []

    def write(self, host_path: str | PurePosixPath, data: str | bytes, *, mode: int,
              only_if_changed: bool = True) -> bool:
        """Record the change (secrets masked by the caller) and report whether it would change."""
        text = data.decode() if isinstance(data, bytes) else data
        old = self.read_text(host_path, default="") if self.exists(host_path) else ""
        if old == text:
            return False
        shown_new = "***\n" if str(host_path) == token.TOKEN_FILE else text
        shown_old = "***\n" if str(host_path) == token.TOKEN_FILE and old else old
        diff = difflib.unified_diff(shown_old.splitlines(True), shown_new.splitlines(True),
                                    f"{host_path} (now)", f"{host_path} (planned, mode {mode:o})")
        self.diffs.append("".join(diff))
        return True


class PlanRunner(Runner):
    """A runner that records commands and runs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: Any, **kwargs: Any) -> Result:  # noqa: D102
        self.commands.append(list(argv))
        return Result(list(argv), 0, "", "", 0.0)


class JoinSequence:
    """One run of the join.

    Args:
        root: host root.
        cfg: effective config.
        imds: IMDS client (default from ``imds.*``).
        notifier: systemd notifier for ``STATUS=`` progress.
        plan: record what would change instead of changing it (``herd-agent plan join``).
        healthy: control-plane probe override (tests).
        kube_client: ``() -> lightkube.Client`` override (tests).
    """

    def __init__(
        self,
        root: HostRoot,
        cfg: Config,
        *,
        imds: ImdsClient | None = None,
        notifier: Notifier | None = None,
        plan: bool = False,
        healthy: Callable[[control_plane.Candidate], bool] | None = None,
        kube_client: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.plan = plan
        self.real_root = root
        self.root: HostRoot = PlanRoot(root) if plan else root
        self.imds = imds or ImdsClient.from_config(cfg)
        self.notifier = notifier or Notifier()
        self.healthy = healthy
        self.kube_client = kube_client
        self.planned_calls: list[str] = []
        self.plan_runner = PlanRunner() if plan else None
        self.ident: Identity | None = None
        self.state: JoinState | None = None
        self._next_endpoint_check: float | None = None

    # --- plumbing --------------------------------------------------------------------------
    def _run(self, argv: list[str], timeout: float) -> Result:
        if self.plan_runner is not None:
            return self.plan_runner.run(argv)
        return runner_mod.get_runner().run(argv, timeout=timeout)

    def _mutate(self, description: str, fn: Callable[[], Any], planned: Any = None) -> Any:
        if self.plan:
            self.planned_calls.append(description)
            return planned
        return fn()

    def _save(self) -> None:
        if self.state is not None and not self.plan:
            save_state(self.root, self.state)

    def _status(self, text: str) -> None:
        log.info("%s", text)
        self.notifier.status(text)

    # --- the sequence ------------------------------------------------------------------------
    def run(self, phase: str = "all") -> JoinState:
        """Run ``phase`` (``config``, ``ready`` or ``all``).

        Raises:
            HerdError: a step failed for good (after the launch hook was completed with
                ``join.failure_result``); its exit code says which kind.
        """
        if phase not in PHASES:
            raise ValueError(f"unknown join phase {phase!r}")
        with step("identity"):
            ident = self.ident = read_identity(self.imds, self.cfg)
        set_context(instance_id=ident.instance_id, cluster=ident.cluster)
        previous = load_state(self.real_root)
        if previous and previous.instance_id == ident.instance_id and previous.cluster == ident.cluster:
            self.state = previous
        else:
            self.state = JoinState(ident.instance_id, ident.cluster, ident.role)
        try:
            if phase in ("config", "all"):
                self._config_phase()
            if phase in ("ready", "all"):
                self._ready_phase()
        except HerdError as exc:
            self._fail(exc)
            raise
        return self.state

    def _fail(self, exc: HerdError) -> None:
        ident = self.ident
        if self.plan or ident is None or not ident.asg_name:
            return
        result = self.cfg.get("join.failure_result")
        log.error("join failed: %s; completing the launch hook with %s", exc, result)
        try:
            from herd_agent import lifecycle

            for name in self._launch_hooks():
                lifecycle.complete(ident.region, ident.asg_name, name, ident.instance_id, result)
        except HerdError as hook_exc:
            log.error("could not complete the launch hook: %s", hook_exc)

    def _config_phase(self) -> None:
        ident, state, cfg = self.ident, self.state, self.cfg
        assert ident is not None and state is not None
        joined = state.ready and state.endpoint_ip is not None
        candidates: list[control_plane.Candidate] = []
        with step("discovery"):
            if joined:
                log.info("already joined; endpoint %s (no EC2 lookup)", state.endpoint_ip)
            else:
                state.founder, state.endpoint_ip, candidates = self._decide()
        name = k3s_config.endpoint_name(cfg, ident)
        with step("hosts"):
            hosts.sync(self.root, {name: state.endpoint_ip})  # type: ignore[dict-item]
        with step("kernel"):
            report = kernel.apply(self.root, cfg, dry_run=self.plan, run=self._run)
            if not report.ok:
                log.warning("kernel settings drift: %s missing: %s", report.drift, report.missing)
        with step("token"):
            if not (joined and self.real_root.exists(token.TOKEN_FILE)):
                if state.founder and ident.is_control_plane:
                    value = self._mutate("ssm:PutParameter (create the join token if none exists)",
                                         lambda: token.create(cfg, ident), planned="planned-token")
                else:
                    value = token.require(cfg, ident)
                token.write_file(self.root, value)
        datastore = None
        if ident.is_control_plane and cfg.get("etcd.mode") == "external":
            datastore = self._etcd(candidates, joined)
        with step("k3s-config"):
            conf = k3s_config.render(cfg, ident, founder=state.founder, datastore_endpoint=datastore)
            k3s_config.write(self.root, conf)
        state.configured = True
        self._save()
        with step("k3s-start"):
            unit = unit_for(ident.is_control_plane)
            if not joined:
                self._run(["systemctl", "enable", unit], timeout=60)
            # Queued, not awaited: readiness is the Node turning Ready, which the ready phase waits
            # for while it watches the control plane it joins through (see _waiting).
            self._status(f"starting {unit}")
            self._run(["systemctl", "start", "--no-block", unit], timeout=60)

    def _decide(self) -> tuple[bool, str, list[control_plane.Candidate]]:
        """(founder?, endpoint IP, candidates seen) — the founder decision for control planes."""
        ident, cfg = self.ident, self.cfg
        assert ident is not None
        if not ident.is_control_plane:
            return False, control_plane.discover(ident, cfg, healthy=self.healthy).ip, []
        port, timeout = cfg.get("discovery.api_port"), cfg.get("discovery.health_timeout_s")
        check = self.healthy or (lambda c: control_plane.probe(c.ip, port, timeout))
        candidates = control_plane.describe_control_planes(ident, cfg)
        found = control_plane.choose(candidates, check, ident.availability_zone)
        if found is not None:
            return False, found.ip, candidates
        incarnation = founder_mod.incarnation(cfg, ident)
        won = self._mutate(f"ssm:PutParameter {founder_mod.record_name(cfg, ident, incarnation)} (Overwrite=False)",
                           lambda: founder_mod.claim(cfg, ident, incarnation), planned=True)
        if won:
            return True, ident.private_ip, candidates
        chosen = control_plane.discover(ident, cfg, healthy=self.healthy)
        return False, chosen.ip, control_plane.describe_control_planes(ident, cfg)

    def _etcd(self, candidates: list[control_plane.Candidate], joined: bool) -> str:
        from herd_agent.etcd.settings import EtcdSettings
        from herd_agent.etcd.settings import Identity as EtcdIdentity

        ident, state = self.ident, self.state
        assert ident is not None and state is not None
        settings = EtcdSettings.from_config(self.cfg, cluster=ident.cluster)
        endpoint = settings.client_url(ident.private_ip)
        if joined:
            return endpoint
        with step("etcd"):
            from herd_agent.etcd.membership import Membership
            from herd_agent.etcd.pki import SecretsManagerCaStore

            me = Membership(self.root, settings, EtcdIdentity(ident.instance_id, ident.private_ip),
                            runner=self.plan_runner, ca_store=SecretsManagerCaStore(settings.ca_secret, ident.region))
            if state.founder:
                self._mutate("etcd: found a new cluster", me.found)
            else:
                from herd_agent import aws
                from herd_agent.etcd.gc import Ec2InstanceOracle

                peers = [settings.client_url(c.ip) for c in candidates]
                oracle = Ec2InstanceOracle(ident.region, client=aws.client("ec2", ident.region))
                self._mutate(f"etcd: join as learner through {', '.join(peers)}, then promote",
                             lambda: me.join(peers, oracle))
        return endpoint

    def _ready_phase(self) -> None:
        from herd_agent import kube, lifecycle

        ident, state, cfg = self.ident, self.state, self.cfg
        assert ident is not None and state is not None
        if state.ready and state.hook_completed:
            log.info("Node was Ready and the launch hook completed before; nothing to do")
            return
        node = node_name(cfg.get("k3s.node_name"), ident)
        with step("wait-ready"):
            if self.plan:
                self.planned_calls.append(f"kubernetes: wait for Node {node} Ready "
                                          f"(up to {cfg.get('join.ready_timeout_s')}s)")
            else:
                make = self.kube_client or (lambda: kube.client(self.root, cfg, control_plane=ident.is_control_plane))
                kube.wait_node_ready(make, node, cfg.get("join.ready_timeout_s"), progress=self._waiting)
                state.ready = True
                self._save()
        with step("launch-hook"):
            if not ident.asg_name:
                log.info("not in an Auto Scaling group; no launch hook to complete")
            else:
                for name in self._launch_hooks():
                    self._mutate(f"autoscaling:CompleteLifecycleAction {name} CONTINUE",
                                 lambda n=name: lifecycle.complete(ident.region, ident.asg_name, n,
                                                                   ident.instance_id, "CONTINUE"))
            if not self.plan:
                state.hook_completed = True
                self._save()
        self._status(f"joined cluster {ident.cluster} as {ident.role} {node}")

    ENDPOINT_CHECK_S = 10.0

    def _waiting(self, line: str) -> None:
        """Progress of the Ready wait: STATUS=, and a check that the control plane we join through
        still answers. If it stopped (replaced or terminated meanwhile), point /etc/hosts at a
        healthy one and restart the k3s unit — what systemd's Restart= with the k3s drop-in's
        ``ExecStartPre=herd-agent hosts sync`` would do, without waiting for k3s to give up."""
        self.notifier.status(line)
        state, ident = self.state, self.ident
        if state is None or ident is None or state.founder or not state.endpoint_ip:
            return
        now = time.monotonic()
        if self._next_endpoint_check is None:
            self._next_endpoint_check = now + self.ENDPOINT_CHECK_S
        if now < self._next_endpoint_check:
            return
        self._next_endpoint_check = now + self.ENDPOINT_CHECK_S
        port, timeout = self.cfg.get("discovery.api_port"), self.cfg.get("discovery.health_timeout_s")
        if control_plane.probe(state.endpoint_ip, port, timeout):
            return
        chosen = control_plane.discover(ident, self.cfg, healthy=self.healthy)
        if chosen.ip == state.endpoint_ip:
            return
        log.warning("control plane %s stopped answering while we joined; switching to %s and restarting k3s",
                    state.endpoint_ip, chosen.ip)
        hosts.sync(self.root, {k3s_config.endpoint_name(self.cfg, ident): chosen.ip})
        state.endpoint_ip = chosen.ip
        self._save()
        unit = unit_for(ident.is_control_plane)
        self._run(["systemctl", "restart", "--no-block", unit], timeout=60)

    def _launch_hooks(self) -> list[str]:
        """Names of the group's launch hooks: ``join.launch_hook_name``, or DescribeLifecycleHooks."""
        from herd_agent import lifecycle

        assert self.ident is not None and self.ident.asg_name
        configured = self.cfg.get("join.launch_hook_name")
        if configured:
            return [configured]
        return [h.name for h in lifecycle.hooks(self.ident.region, self.ident.asg_name, lifecycle.LAUNCHING)]

    # --- plan output ---------------------------------------------------------------------------
    def plan_report(self) -> str:
        """What a plan run found: file diffs, commands, API calls (empty sections omitted)."""
        assert self.plan
        out = []
        diffs = self.root.diffs  # type: ignore[attr-defined]
        out.append(f"files ({len(diffs)} would change):")
        out += [d.rstrip("\n") for d in diffs] or ["  (none)"]
        cmds = self.plan_runner.commands if self.plan_runner else []
        out.append(f"commands ({len(cmds)}):")
        out += [f"  {' '.join(c)}" for c in cmds] or ["  (none)"]
        out.append(f"API calls that change things ({len(self.planned_calls)}):")
        out += [f"  {c}" for c in self.planned_calls] or ["  (none)"]
        return "\n".join(out) + "\n"
