"""The leave sequence.

Order (each step journaled in ``/var/lib/herd-agent/leave.json``; see :mod:`.journal`):

1. **cordon**: ``spec.unschedulable``, the label
   ``node.kubernetes.io/exclude-from-external-load-balancers``, and the taint
   ``herd.io/leaving:NoSchedule``;
2. **drain** (:mod:`herd_agent.drain.engine`) against the budget: the earliest deadline (hook
   global timeout, spot notice, stop timeout) minus ``leave.reserve_s``;
3. control planes, **embedded etcd**: **etcd** — delete the Node (k3s' etcd finalizer removes the
   member), verify the member is gone, remove it directly if not;
4. **delete-node** (NotFound is fine) and k3s' ``<node>.node-password.k3s`` secret;
5. **stop-k3s** (``k3s-killall.sh``, which also stops its pods; or ``systemctl stop``);
6. control planes, **external etcd**: **etcd** — quorum proof, leadership moved away, member
   removed and confirmed, etcd stopped, data dir rotated. It runs after k3s stopped because the
   local API server lives on the local member (DESIGN.md listed it before the Node deletion; the
   k3s API would be gone by then);
7. **complete-hook**: always attempted before the deadline, even after failed steps: CONTINUE, or
   ``leave.failure_result`` when a step failed; "no active lifecycle action" counts as done.

The hook is heartbeaten every max(30 s, heartbeat timeout / 3) (at most half the timeout) for as
long as the sequence runs. Each phase is also a Kubernetes Event on the Node, a webhook call when
configured, and the end writes the Prometheus textfile.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity, read_identity
from herd_agent.discovery.imds import ImdsClient
from herd_agent.drain.budget import drain_budget, global_timeout_s, heartbeat_interval_s
from herd_agent.errors import HerdError
from herd_agent.host import runner as runner_mod
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.k3s.names import node_name, unit_for
from herd_agent.leave import journal as jr
from herd_agent.leave import report
from herd_agent.logs import set_context, step

log = logging.getLogger(__name__)

LEAVING_TAINT = {"key": "herd.io/leaving", "value": "true", "effect": "NoSchedule"}
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
FAILPOINT_ENV = "HERD_AGENT_FAILPOINT"
COMPLETE_MARGIN_S = 5.0


@dataclass(frozen=True)
class LeaveRequest:
    """Why and by when: ``reason``, ``deadline`` (epoch seconds or None), whether to complete the hook."""

    reason: str
    deadline: float | None = None
    complete_hook: bool = True


class LeaveSequence:
    """Run (or resume) the leave.

    Args:
        root: host root.
        cfg: effective config.
        imds: IMDS client (identity).
        notifier: systemd notifier (STATUS, EXTEND_TIMEOUT_USEC while stopping).
        kube_factory: ``(identity) -> lightkube.Client`` override (tests).
        stopping: the service manager is stopping us (extend the stop timeout while working).
        clock: epoch seconds.
    """

    def __init__(self, root: HostRoot, cfg: Config, *, imds: ImdsClient | None = None,
                 notifier: Notifier | None = None, kube_factory: Callable[[Identity], Any] | None = None,
                 stopping: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.cfg = cfg
        self.imds = imds or ImdsClient.from_config(cfg)
        self.notifier = notifier or Notifier()
        self.kube_factory = kube_factory
        self.stopping = stopping
        self.clock = clock
        self.ident: Identity | None = None
        self._kube: Any = None
        self._failed: list[str] = []
        self._beats_stop = threading.Event()

    # --- plumbing --------------------------------------------------------------------------------
    @property
    def node(self) -> str:
        """Our Node's name (the instance id, or the hostname by config)."""
        assert self.ident is not None
        return node_name(self.cfg.get("k3s.node_name"), self.ident)

    def kube(self) -> Any:
        """The Kubernetes client (built once, lazily)."""
        if self._kube is None:
            assert self.ident is not None
            if self.kube_factory is not None:
                self._kube = self.kube_factory(self.ident)
            else:
                self._kube = make_kube_client(self.root, self.cfg, self.ident)
        return self._kube

    def _failpoint(self, name: str, where: str) -> None:
        # A test hook: HERD_AGENT_FAILPOINT=<step>:<before|after> stops this process (SIGSTOP) at
        # that step boundary, after the journal is written, so a test can kill -9 it exactly there.
        if os.environ.get(FAILPOINT_ENV) == f"{name}:{where}":
            os.kill(os.getpid(), signal.SIGSTOP)

    def _phase(self, journal: jr.LeaveJournal, reason: str, message: str, *, warning: bool = False) -> None:
        self.notifier.status(f"leaving ({journal.reason}): {message}")
        if self._kube is not None or reason in ("HerdLeaveStarted",):
            try:
                report.node_event(self.kube(), self.node, reason, message, warning=warning)
            except Exception as exc:  # no client: no event, the leave goes on
                log.debug("no Kubernetes client for events: %s", exc)
        assert self.ident is not None
        report.webhook(self.cfg, {"event": reason, "message": message, "node": self.node,
                                  "instance_id": self.ident.instance_id, "cluster": self.ident.cluster,
                                  "reason": journal.reason, "time": self.clock()})

    def _step(self, journal: jr.LeaveJournal, name: str, fn: Callable[[], str | None]) -> None:
        state = journal.steps[name]
        if state.status in ("done", "failed", "skipped"):
            return
        self._failpoint(name, "before")
        if name != "complete-hook" and journal.deadline is not None \
                and self.clock() > journal.deadline - COMPLETE_MARGIN_S:
            state.status, state.detail = "skipped", "deadline reached; completing the lifecycle action instead"
            jr.save(self.root, journal)
            return
        state.status, state.starts, state.started_at = "started", state.starts + 1, self.clock()
        jr.save(self.root, journal)
        with step(name):
            try:
                detail = fn()
                state.status = "skipped" if detail and detail.startswith("skipped") else "done"
                state.detail = detail or ""
            except Exception as exc:
                state.status, state.detail = "failed", str(exc)
                self._failed.append(name)
                log.error("leave step %s failed: %s", name, exc)
        state.finished_at = self.clock()
        jr.save(self.root, journal)
        self._failpoint(name, "after")

    # --- the sequence ------------------------------------------------------------------------------
    def run(self, request: LeaveRequest | None) -> jr.LeaveJournal:
        """Run a new leave for ``request``, or resume the journaled one (``request`` may be None then).

        Raises:
            LeaveBusy: another leave holds the lock.
            HerdError: nothing to resume and no request.
        """
        with jr.LeaveLock(self.root):
            journal = jr.load(self.root)
            if journal is None or (journal.finished and request is not None):
                if request is None:
                    raise HerdError("no leave to resume (no unfinished /var/lib/herd-agent/leave.json)")
                deadline = request.deadline
                if self.cfg.get("leave.deadline_s") is not None:
                    own = self.clock() + float(self.cfg.get("leave.deadline_s"))
                    deadline = own if deadline is None else min(deadline, own)
                journal = jr.LeaveJournal(reason=request.reason, started_at=self.clock(), deadline=deadline)
                if not request.complete_hook:
                    journal.steps["complete-hook"].status = "skipped"
                    journal.steps["complete-hook"].detail = "skipped: not a termination"
                jr.save(self.root, journal)
            elif journal.finished:
                return journal
            else:
                log.info("resuming the %s leave started at %s", journal.reason, time.ctime(journal.started_at))
            self.ident = read_identity(self.imds, self.cfg)
            set_context(instance_id=self.ident.instance_id, cluster=self.ident.cluster)
            self._find_hook(journal)
            beats = self._start_heartbeats(journal)
            try:
                self._phase(journal, "HerdLeaveStarted", f"leaving the cluster: {journal.reason}")
                for name, fn in self._plan(journal):
                    self._step(journal, name, fn)
            finally:
                self._step(journal, "complete-hook", lambda: self._complete(journal))
                self._beats_stop.set()
                if beats is not None:
                    beats.join(timeout=5)
                journal.finished_at = self.clock()
                self._finish(journal)  # metrics and webhook first: a finished journal means all is written
                jr.save(self.root, journal)
            return journal

    def _plan(self, journal: jr.LeaveJournal) -> list[tuple[str, Callable[[], str | None]]]:
        assert self.ident is not None
        steps: list[tuple[str, Callable[[], str | None]]] = [
            ("cordon", self._cordon), ("drain", lambda: self._drain(journal))]
        cp = self.ident.is_control_plane
        embedded = self.cfg.get("etcd.mode") == "embedded"
        if cp and embedded:
            steps.append(("etcd", self._etcd_embedded))
        steps += [("delete-node", self._delete_node), ("stop-k3s", self._stop_k3s)]
        if cp and not embedded:
            steps.append(("etcd", self._etcd_external))
        etcd = journal.steps["etcd"]
        if not cp and etcd.status == "pending":
            etcd.status, etcd.detail = "skipped", "skipped: not a control plane"
        return steps

    def _find_hook(self, journal: jr.LeaveJournal) -> None:
        assert self.ident is not None
        if journal.hook is not None or not self.ident.asg_name or journal.steps["complete-hook"].status == "skipped":
            return
        from herd_agent import lifecycle

        try:
            hooks = lifecycle.hooks(self.ident.region, self.ident.asg_name, lifecycle.TERMINATING)
        except HerdError as exc:
            log.warning("could not read the group's lifecycle hooks: %s", exc)
            return
        if not hooks:
            return
        hook = hooks[0]
        journal.hook = {"name": hook.name, "group": self.ident.asg_name,
                        "heartbeat_timeout_s": hook.heartbeat_timeout_s, "global_timeout_s": hook.global_timeout_s}
        hook_deadline = journal.started_at + global_timeout_s(hook.heartbeat_timeout_s)
        journal.deadline = hook_deadline if journal.deadline is None else min(journal.deadline, hook_deadline)
        jr.save(self.root, journal)

    def _start_heartbeats(self, journal: jr.LeaveJournal) -> threading.Thread | None:
        hook, ident = journal.hook, self.ident
        if not hook or ident is None or journal.steps["complete-hook"].status != "pending":
            return None
        from herd_agent import lifecycle

        interval = self.cfg.get("leave.heartbeat_interval_s") or heartbeat_interval_s(hook["heartbeat_timeout_s"])

        def beat() -> None:
            while not self._beats_stop.wait(interval):
                try:
                    if not lifecycle.heartbeat(ident.region, hook["group"], hook["name"], ident.instance_id):
                        log.info("no active lifecycle action to heartbeat; stopping heartbeats")
                        return
                    log.info("lifecycle hook %s: heartbeat", hook["name"])
                    if self.stopping:
                        self.notifier.extend_timeout(interval * 2)
                except Exception as exc:
                    log.warning("heartbeat failed: %s", exc)

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        return thread

    # --- steps ---------------------------------------------------------------------------------------
    def _cordon(self) -> str:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        try:
            node = self.kube().get(Node, self.node)
        except ApiError as exc:
            if exc.status.code == 404:
                return "skipped: the Node is already gone"
            raise
        taints = [t.to_dict() for t in (node.spec.taints or [])] if node.spec else []
        if not any(t.get("key") == LEAVING_TAINT["key"] for t in taints):
            taints.append(dict(LEAVING_TAINT))
        self.kube().patch(Node, self.node, {"metadata": {"labels": {EXCLUDE_LB_LABEL: "true"}},
                                            "spec": {"unschedulable": True, "taints": taints}},
                          patch_type=PatchType.MERGE)
        return "cordoned, excluded from external load balancers, tainted herd.io/leaving"

    def _drain(self, journal: jr.LeaveJournal) -> str:
        from herd_agent.drain.engine import Drainer, DrainPolicy, KubeDrainApi

        reserve = float(self.cfg.get("leave.reserve_s"))
        budget = drain_budget(self.clock(), journal.deadline, reserve)
        drainer = Drainer(KubeDrainApi(self.kube()), self.node, DrainPolicy.from_config(self.cfg), budget,
                          on_progress=self.notifier.status)
        result = drainer.run()
        journal.pods = {o.pod: {"outcome": o.outcome, "detail": o.detail} for o in result.outcomes.values()}
        blocked = result.blocked()
        message = (f"drained in {result.seconds:.1f}s: {result.count('evicted')} evicted, "
                   f"{result.count('deleted')} deleted, {len(blocked)} did not leave in time (budget {budget:.0f}s)")
        self._phase(journal, "HerdDrained" if not blocked else "HerdDrainIncomplete", message, warning=bool(blocked))
        for o in blocked:
            log.warning("pod %s: %s (%s)", o.pod, o.outcome, o.detail)
        return message

    def _delete_node(self) -> str:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Node, Secret

        gone = []
        for kind, name, ns in ((Node, self.node, None), (Secret, f"{self.node}.node-password.k3s", "kube-system")):
            try:
                self.kube().delete(kind, name, **({"namespace": ns} if ns else {}))
                gone.append(f"{kind.__name__} {name} deleted")
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
                gone.append(f"{kind.__name__} {name} already gone")
        return "; ".join(gone)

    def _stop_k3s(self) -> str:
        assert self.ident is not None
        how = self.cfg.get("leave.stop_k3s")
        unit = unit_for(self.ident.is_control_plane)
        run = runner_mod.get_runner().run
        if how == "none":
            return "skipped: leave.stop_k3s is none"
        if self.stopping:
            # At shutdown the stop job of k3s is already queued, ordered after this unit: waiting
            # for it (systemctl stop, or k3s-killall.sh, which starts with one) deadlocks until the
            # timeout. Queue it and return; systemd stops k3s once the watcher exits.
            run(["systemctl", "stop", "--no-block", unit], timeout=120)
            return f"queued the stop of {unit}: systemd stops it after the watcher exits (shutdown)"
        if how == "killall":
            run(["k3s-killall.sh"], timeout=120)
            return "k3s-killall.sh stopped k3s and its pods"
        run(["systemctl", "stop", unit], timeout=120)
        return f"stopped {unit} (its pods keep running: KillMode=process)"

    def _membership(self) -> Any:
        from herd_agent.etcd.membership import Membership
        from herd_agent.etcd.settings import EtcdSettings
        from herd_agent.etcd.settings import Identity as EtcdIdentity

        assert self.ident is not None
        settings = EtcdSettings.from_config(self.cfg, cluster=self.ident.cluster)
        me = Membership(self.root, settings, EtcdIdentity(self.node, self.ident.private_ip))
        return me, settings

    def _etcd_external(self) -> str:
        me, settings = self._membership()
        assert self.ident is not None
        result = me.leave([settings.client_url(self.ident.private_ip)])
        return f"left etcd: {result}"

    def _etcd_embedded(self) -> str:
        me, settings = self._membership()
        assert self.ident is not None
        # k3s' member listens on 127.0.0.1 and on the node IP; try both.
        own = f"https://{self.ident.private_ip}:{settings.client_port}"
        result = me.leave_embedded([own, settings.embedded_client_url], self._delete_node)
        return f"left k3s' embedded etcd: {result}"

    def _complete(self, journal: jr.LeaveJournal) -> str:
        from herd_agent import lifecycle

        hook, ident = journal.hook, self.ident
        if not hook or ident is None:
            return "skipped: no terminating lifecycle hook"
        result = self.cfg.get("leave.failure_result") if self._failed else "CONTINUE"
        done = lifecycle.complete(ident.region, hook["group"], hook["name"], ident.instance_id, result)
        journal.result = result
        return f"completed {result}" if done else f"no active lifecycle action (sent {result}); nothing to complete"

    def _finish(self, journal: jr.LeaveJournal) -> None:
        evicted = sum(1 for p in journal.pods.values() if p["outcome"] in ("evicted", "gone"))
        blocked = sum(1 for p in journal.pods.values() if p["outcome"] in ("blocked", "timed-out"))
        report.write_metrics(self.root, self.cfg, {
            "leave_duration_seconds": (journal.finished_at or self.clock()) - journal.started_at,
            "pods_evicted": evicted, "pods_blocked": blocked, "termination_reason": journal.reason})
        failed = [n for n, s in journal.steps.items() if s.status == "failed"]
        summary = f"left: {', '.join(f'{n}={s.status}' for n, s in journal.steps.items())}"
        self.notifier.status(summary)
        assert self.ident is not None
        report.webhook(self.cfg, {"event": "HerdLeaveFinished", "node": self.node, "failed_steps": failed,
                                  "result": journal.result, "instance_id": self.ident.instance_id,
                                  "cluster": self.ident.cluster, "reason": journal.reason, "time": self.clock()})
        log.info("%s", summary)


def make_kube_client(root: HostRoot, cfg: Config, ident: Identity) -> Any:
    """The leave's Kubernetes client: the configured kubeconfig, a ServiceAccount token from
    SSM/Secrets Manager, or (control planes) k3s' admin kubeconfig.

    Raises:
        HerdError: a worker with no credential that can evict pods (exit 66).
    """
    from herd_agent import kube
    from herd_agent.k3s.config import endpoint_name

    if cfg.get("kube.kubeconfig") or ident.is_control_plane:
        return kube.client(root, cfg, control_plane=ident.is_control_plane)
    token = kube.service_account_token(cfg, ident.region)
    if token is None:
        raise HerdError("a worker needs its own Kubernetes credential to evict pods: set kube.kubeconfig, "
                        "kube.token_ssm_parameter or kube.token_secret_id")
    server = cfg.get("kube.server") or f"https://{endpoint_name(cfg, ident)}:{cfg.get('discovery.api_port')}"
    return kube.client(root, cfg, control_plane=False, token=token, server=server)
