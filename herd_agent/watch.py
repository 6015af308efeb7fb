"""The termination watcher (``herd-agent watch``, ``herd-agent.service``, Type=notify).

Every ``watch.poll_interval_s`` it reads, over IMDSv2 with one token per TTL:

- ``autoscaling/target-lifecycle-state``: ``Terminated`` means a scale-in, a terminate call or a
  failed health check put this instance in ``Terminating:Wait``; confirmed with one
  ``DescribeAutoScalingInstances`` before acting (AWS docs: the target state is the state the
  instance is moving to);
- ``spot/instance-action``: terminate, stop or hibernate two minutes ahead (the notice's
  ``time`` is the deadline);
- ``events/recommendations/rebalance`` and ``events/maintenance/scheduled``: per
  ``watch.on_rebalance`` / ``watch.on_maintenance`` (ignore, cordon or leave). These advisories
  come minutes to days ahead, so they are read every tenth poll only.

It sends ``READY=1`` after the first good poll and ``WATCHDOG=1`` while polls succeed, and keeps
the /etc/hosts endpoint pointing at a healthy control plane (probing the recorded one every
``hosts.refresh_interval_s``; looking further only when it stops answering).

**SIGTERM.** systemd sends it both when the machine shuts down and when only the service stops
(``systemctl restart`` after a package upgrade). The watcher leaves only in the first case, and
tells them apart by asking the service manager: during a shutdown ``systemctl is-system-running``
answers ``stopping`` (systemd(1): the manager is shutting down), and a start job for
``shutdown.target`` is queued (``systemctl list-jobs``). Either one means shutdown; otherwise it
exits without draining. See docs/leave.md.

The watcher imports no boto3 and no Kubernetes client until an event needs them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.imds import ImdsClient, ImdsError
from herd_agent.host import runner as runner_mod
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.logs import RateLimitedLogger

log = logging.getLogger(__name__)

ADVISORY_EVERY = 10  # polls between two reads of the rebalance and maintenance paths
SHUTDOWN_TARGETS = ("shutdown.target", "reboot.target", "poweroff.target", "halt.target", "kexec.target")


def system_is_shutting_down(run: Callable[..., Any] | None = None) -> bool:
    """True when the service manager is shutting the machine down (see the module docstring)."""
    run = run or runner_mod.get_runner().run
    try:
        state = run(["systemctl", "is-system-running"], timeout=10, check=False).stdout.strip()
    except Exception as exc:
        log.warning("could not ask systemd for the system state: %s", exc)
        state = ""
    if state == "stopping":
        return True
    try:
        jobs = run(["systemctl", "list-jobs", "--no-legend", "--no-pager"], timeout=10, check=False)
        if jobs.returncode == 0:
            return any(t in line.split() for line in jobs.stdout.splitlines() for t in SHUTDOWN_TARGETS)
    except Exception:
        pass
    return False


class Watcher:
    """The watcher loop.

    Args:
        root: host root.
        cfg: effective config.
        imds: IMDS client.
        notifier: systemd notifier.
        leave: ``leave(reason, deadline_epoch_or_None, complete_hook, stopping)`` — runs the leave
            (default: :class:`herd_agent.leave.sequence.LeaveSequence`).
        clock: epoch seconds.
    """

    def __init__(self, root: HostRoot, cfg: Config, *, imds: ImdsClient | None = None,
                 notifier: Notifier | None = None, leave: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.cfg = cfg
        self.imds = imds or ImdsClient.from_config(cfg)
        self.notifier = notifier or Notifier()
        self._leave = leave or self._run_leave
        self.clock = clock
        self.interval = float(cfg.get("watch.poll_interval_s"))
        self.term = threading.Event()
        self.limited = RateLimitedLogger(log, interval=60)
        self.last_good_poll: float | None = None
        self.ready = False
        self.left = False
        self.instance_id: str | None = None
        self._handled: set[str] = set()
        self._next_hosts_check = 0.0
        self._next_metrics = 0.0
        self._polls = 0
        self._next_gc = time.monotonic() + float(cfg.get("etcd.gc_interval_s"))

    # --- the loop --------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """Polls are succeeding (the last good one is at most three intervals old)."""
        return self.last_good_poll is not None and time.monotonic() - self.last_good_poll <= 3 * self.interval + 5

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set :attr:`term`; the loop decides what to do."""
        signal.signal(signal.SIGTERM, lambda *_: self.term.set())
        signal.signal(signal.SIGINT, lambda *_: self.term.set())

    def run(self) -> int:
        """Poll until terminated or left; returns the exit code."""
        self._resume_unfinished_leave()
        while not self.left:
            self.poll_once()
            if self.left:
                break
            if self.term.is_set() or self.term.wait(self.interval):
                return self.on_sigterm()
        self.notifier.stopping("left the cluster")
        # Nothing more to watch: stay until systemd stops us, so Restart= does not loop.
        self.term.wait()
        return 0

    def poll_once(self) -> None:
        """One poll of every IMDS path; acts on what it finds."""
        try:
            if self.instance_id is None:
                self.instance_id = (self.imds.get("/latest/meta-data/instance-id") or "").strip()
            target = self.imds.target_lifecycle_state()
            spot = self.imds.spot_instance_action()
            # Advisories come minutes (rebalance) to days (maintenance) ahead: every 10th poll.
            advisory = self._polls % ADVISORY_EVERY == 0
            self._polls += 1
            rebalance = self.imds.rebalance_recommendation() if advisory else None
            events = self.imds.scheduled_events() if advisory else []
        except ImdsError as exc:
            self.limited.log(logging.WARNING, "imds", "IMDS poll failed: %s", exc)
            return
        self.limited.reset("imds")
        self.last_good_poll = time.monotonic()
        if not self.ready:
            self.ready = True
            self.notifier.ready(f"watching {self.instance_id} every {self.interval:g}s")
            self.notifier.start_watchdog(self.healthy)
            log.info("watching for termination every %gs", self.interval)
        if spot and spot.get("action") and "spot" not in self._handled:
            self._handled.add("spot")
            self.on_spot(spot)
        elif target == "Terminated" and "asg" not in self._handled:
            self.on_target_terminated()
        if self.left:
            return  # the node is gone from the cluster: no more hosts refresh, gc or advisories
        if rebalance and "rebalance" not in self._handled:
            self._handled.add("rebalance")
            self.on_advice("rebalance", self.cfg.get("watch.on_rebalance"), f"rebalance recommendation {rebalance}")
        for event in events:
            key = f"event:{event.get('EventId')}"
            if key not in self._handled and event.get("State", "active") == "active":
                self._handled.add(key)
                self.on_advice("maintenance", self.cfg.get("watch.on_maintenance"),
                               f"scheduled event {event.get('Code')} {event.get('EventId')}")
        now = time.monotonic()
        if now >= self._next_gc:
            self._next_gc = now + float(self.cfg.get("etcd.gc_interval_s"))
            self.etcd_gc()
        if now >= self._next_hosts_check:
            self._next_hosts_check = now + float(self.cfg.get("hosts.refresh_interval_s"))
            self.refresh_hosts()
        if now >= self._next_metrics:
            self._next_metrics = now + 60
            from herd_agent.leave import report

            report.write_metrics(self.root, self.cfg, {"watcher_healthy": True, "watcher_last_poll": self.clock()})

    # --- reactions ---------------------------------------------------------------------------------
    def on_target_terminated(self) -> None:
        """Confirm ``Terminating:Wait`` with DescribeAutoScalingInstances, then leave."""
        from herd_agent import aws

        try:
            region = (self.imds.get("/latest/meta-data/placement/region") or "").strip()
            resp = aws.call(aws.client("autoscaling", region), "DescribeAutoScalingInstances",
                            InstanceIds=[self.instance_id])
        except Exception as exc:
            self.limited.log(logging.WARNING, "confirm", "could not confirm the termination: %s", exc)
            return
        states = [i.get("LifecycleState", "") for i in resp.get("AutoScalingInstances", [])]
        if not states or not states[0].startswith("Terminating"):
            self.limited.log(logging.INFO, "confirm", "IMDS says Terminated, Auto Scaling says %s; waiting",
                             states[0] if states else "unknown")
            return
        self._handled.add("asg")
        log.warning("Auto Scaling is terminating this instance (%s): leaving", states[0])
        self._do_leave("asg-terminate", None, True)

    def on_spot(self, notice: dict[str, Any]) -> None:
        """A spot interruption: leave before the notice's time (stop/hibernate: drain, keep the hook)."""
        action = notice.get("action", "terminate")
        deadline = _parse_time(notice.get("time"))
        log.warning("spot interruption notice: %s at %s", action, notice.get("time"))
        self._do_leave(f"spot-{action}", deadline, True)

    def on_advice(self, kind: str, reaction: str, what: str) -> None:
        """Rebalance or maintenance: ignore, cordon, or leave (by config)."""
        log.warning("%s; reaction: %s", what, reaction)
        if reaction == "leave":
            self._do_leave(kind, None, False)
        elif reaction == "cordon":
            self.cordon_only(kind)

    def cordon_only(self, why: str) -> None:
        """Cordon the Node (no drain) — the ``cordon`` reaction."""
        try:
            from herd_agent.discovery.identity import read_identity
            from herd_agent.leave.sequence import LeaveSequence

            seq = LeaveSequence(self.root, self.cfg, imds=self.imds, notifier=self.notifier)
            seq.ident = read_identity(self.imds, self.cfg)
            seq._cordon()
            log.info("cordoned for %s", why)
        except Exception as exc:
            log.error("could not cordon for %s: %s", why, exc)

    def on_sigterm(self) -> int:
        """SIGTERM: leave when the machine shuts down; exit quietly when only the service stops."""
        if self.left:
            return 0  # already left the cluster: nothing more to do, whatever the reason
        if system_is_shutting_down():
            log.warning("the machine is shutting down: leaving the cluster")
            self.notifier.stopping("shutting down: leaving the cluster")
            deadline = self.clock() + float(self.cfg.get("leave.stop_timeout_s")) - 10
            self._do_leave("shutdown", deadline, True, stopping=True)
        else:
            log.info("the service is stopping but the machine is not shutting down: not draining")
            self.notifier.stopping("service stop (not a shutdown): not draining")
        return 0

    def _do_leave(self, reason: str, deadline: float | None, complete_hook: bool, *, stopping: bool = False) -> None:
        try:
            self._leave(reason, deadline, complete_hook, stopping)
            if complete_hook:
                self.left = True
        except Exception as exc:
            log.error("leave (%s) failed: %s", reason, exc)

    def _run_leave(self, reason: str, deadline: float | None, complete_hook: bool, stopping: bool) -> None:
        from herd_agent.leave.sequence import LeaveRequest, LeaveSequence

        LeaveSequence(self.root, self.cfg, imds=self.imds, notifier=self.notifier, stopping=stopping).run(
            LeaveRequest(reason, deadline, complete_hook))

    def _resume_unfinished_leave(self) -> None:
        from herd_agent.leave import journal as jr

        journal = jr.load(self.root)
        if journal is not None and not journal.finished:
            log.warning("an unfinished %s leave is journaled: resuming it", journal.reason)
            from herd_agent.leave.sequence import LeaveSequence

            LeaveSequence(self.root, self.cfg, imds=self.imds, notifier=self.notifier).run(None)
            self.left = journal.steps["complete-hook"].status != "skipped"

    # --- etcd ----------------------------------------------------------------------------------------
    def etcd_gc(self) -> None:
        """Control planes, external etcd: one stale-member pass (``herd-agent etcd gc``) under the
        membership lock, with EC2 as cloud truth. Imports boto3 only here, on control planes."""
        from herd_agent.join.state import load_state

        state = load_state(self.root)
        if state is None or state.role != "control-plane" or self.cfg.get("etcd.mode") != "external" \
                or state.instance_id != self.instance_id:
            return
        try:
            from herd_agent import aws
            from herd_agent.etcd.gc import Ec2InstanceOracle
            from herd_agent.etcd.membership import Membership
            from herd_agent.etcd.settings import EtcdSettings
            from herd_agent.etcd.settings import Identity as EtcdIdentity

            ip = (self.imds.get("/latest/meta-data/local-ipv4") or "").strip()
            region = (self.imds.get("/latest/meta-data/placement/region") or "").strip()
            settings = EtcdSettings.from_config(self.cfg, cluster=state.cluster)
            me = Membership(self.root, settings, EtcdIdentity(state.instance_id, ip))
            result = me.gc([settings.client_url(ip)], Ec2InstanceOracle(region, client=aws.client("ec2", region)))
            if result.removed is not None:
                log.warning("etcd gc removed stale member %s", result.removed)
            self.limited.reset("etcd-gc")
        except Exception as exc:
            self.limited.log(logging.WARNING, "etcd-gc", "etcd stale-member pass failed: %s", exc)

    # --- /etc/hosts --------------------------------------------------------------------------------
    def refresh_hosts(self) -> None:
        """Keep the endpoint name on a healthy control plane, as decided by the one owner,
        :func:`herd_agent.discovery.control_plane.healthy_endpoint`: the recorded one is kept while
        it accepts connections (``liveness="connect"``: no TLS, no AWS call, no IMDS read); only when
        it stopped are the control planes looked up by tag and probed (TLS verified against the
        pinned CA)."""
        from herd_agent.join.state import load_state

        state = load_state(self.root)
        if state is None or not state.endpoint_ip or state.instance_id != self.instance_id:
            return
        from herd_agent.discovery import control_plane
        from herd_agent.discovery.identity import read_identity

        old = state.endpoint_ip
        read: list = []

        def identity():  # read only when a lookup is needed
            read.append(read_identity(self.imds, self.cfg))
            return read[-1]

        try:
            chosen = control_plane.healthy_endpoint(identity, self.cfg, current=old, liveness="connect",
                                                    ca_pem=control_plane.pinned_ca(self.root)).chosen
        except Exception as exc:
            self.limited.log(logging.WARNING, "hosts-refresh", "could not refresh /etc/hosts: %s", exc)
            return
        if chosen.ip == old:
            self.limited.reset("hosts")
            return
        self.limited.log(logging.WARNING, "hosts", "control plane %s stopped answering; switching to %s", old,
                         chosen.ip)
        from herd_agent.host import hosts
        from herd_agent.join.state import save_state
        from herd_agent.k3s.config import endpoint_name

        hosts.sync(self.root, {endpoint_name(self.cfg, read[-1]): chosen.ip})
        state.endpoint_ip = chosen.ip
        save_state(self.root, state)


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    import calendar

    try:
        return float(calendar.timegm(time.strptime(text.replace("Z", ""), "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None
