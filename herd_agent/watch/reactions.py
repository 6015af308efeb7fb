"""What the watcher does about an event, through the leave package's public API only.

- :meth:`LeaveReactions.leave`: run the leave sequence for a reason and deadline;
- :meth:`LeaveReactions.cordon`: the ``cordon`` reaction to an advisory — the leave's own cordon
  (:meth:`LeaveSequence.cordon`: unschedulable, excluded from external load balancers, tainted
  ``herd.io/leaving``), without a journal or a drain;
- :meth:`LeaveReactions.resume`: finish a journaled unfinished leave at start-up;
- :meth:`LeaveReactions.confirm_termination`: the instance's Auto Scaling lifecycle state
  (``DescribeAutoScalingInstances``), for the target-lifecycle-state monitor;
- :func:`system_is_shutting_down`: tell a machine shutdown from a plain service stop.

boto3, lightkube and even :mod:`subprocess` are imported only inside these calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.imds import ImdsClient
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.logs import RateLimitedLogger

log = logging.getLogger(__name__)

SHUTDOWN_TARGETS = ("shutdown.target", "reboot.target", "poweroff.target", "halt.target", "kexec.target")


def system_is_shutting_down(run: Callable[..., Any] | None = None) -> bool:
    """True when the service manager is shutting the machine down.

    During a shutdown ``systemctl is-system-running`` answers ``stopping`` (systemd(1): the
    manager is shutting down), and a start job for a shutdown target is queued
    (``systemctl list-jobs``). Either one means shutdown.
    """
    if run is None:
        from herd_agent.host import runner  # subprocess: only on SIGTERM, not in the idle watcher

        run = runner.get_runner().run
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


class LeaveReactions:
    """The default reactions, over the leave package.

    Args:
        root: host root; cfg: effective config; imds: IMDS client; notifier: systemd notifier.
    """

    def __init__(self, root: HostRoot, cfg: Config, imds: ImdsClient, notifier: Notifier) -> None:
        self.root, self.cfg, self.imds, self.notifier = root, cfg, imds, notifier
        self.limited = RateLimitedLogger(log, interval=60)

    def leave(self, reason: str, deadline: float | None, complete_hook: bool, stopping: bool) -> None:
        """Run the leave sequence (blocking) for ``reason`` by ``deadline`` (epoch seconds or None).

        Raises:
            HerdError: the leave could not start (e.g. another one holds the lock).
        """
        from herd_agent.leave.sequence import LeaveRequest, LeaveSequence

        LeaveSequence(self.root, self.cfg, imds=self.imds, notifier=self.notifier, stopping=stopping).run(
            LeaveRequest(reason, deadline, complete_hook))

    def unfinished(self) -> str | None:
        """The reason of a journaled unfinished leave, or None."""
        from herd_agent.leave import journal as jr

        journal = jr.load(self.root)
        return None if journal is None or journal.finished else str(journal.reason)

    def resume(self) -> bool | None:
        """Finish a journaled unfinished leave; None when there is none, else True when it
        completed the lifecycle action (the instance is leaving for good)."""
        reason = self.unfinished()
        if reason is None:
            return None
        log.warning("an unfinished %s leave is journaled: resuming it", reason)
        from herd_agent.leave.sequence import LeaveSequence

        done = LeaveSequence(self.root, self.cfg, imds=self.imds, notifier=self.notifier).run(None)
        return done.steps["complete-hook"].status != "skipped"

    def cordon(self, why: str) -> None:
        """Cordon our Node through the leave package (no journal, no drain).

        Raises:
            HerdError: no identity or no Kubernetes credential; lightkube.ApiError from the API.
        """
        from herd_agent.leave.sequence import LeaveSequence

        done = LeaveSequence(self.root, self.cfg, imds=self.imds, notifier=self.notifier).cordon()
        log.info("cordon for %s: %s", why, done)

    def confirm_termination(self) -> str | None:
        """This instance's Auto Scaling ``LifecycleState`` (``Terminating:Wait``, ``InService``, …),
        "" when Auto Scaling does not know it, None when the call failed (logged rate-limited)."""
        from herd_agent import aws
        from herd_agent.discovery.identity import valid_region

        try:
            region = valid_region(self.imds.region())
            resp = aws.call(aws.client("autoscaling", region), "DescribeAutoScalingInstances",
                            InstanceIds=[self.imds.instance_id()])
        except Exception as exc:
            self.limited.log(logging.WARNING, "confirm", "could not confirm the termination: %s", exc)
            return None
        states = [i.get("LifecycleState") for i in resp.get("AutoScalingInstances", []) if isinstance(i, dict)]
        return states[0] if states and isinstance(states[0], str) else ""
