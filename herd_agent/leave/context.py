"""What every leave step runs over: :class:`LeaveContext`.

The context is built once, before the first step, with the identity already read (steps never
see a missing one), the effective config, the journal, the clients (built lazily: a leave that
only completes a hook never imports lightkube), the reporter, and the plan mode (``plan leave``
describes the steps instead of running them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.leave import journal as jr


class LeaveClients:
    """The leave's clients, each built on first use and then kept.

    Args:
        kube: ``() -> lightkube.Client`` (see :func:`herd_agent.leave.credentials.make_kube_client`).
        lifecycle: ``() -> LifecycleHooks`` (the Auto Scaling client of the instance's region).
        runner: ``() -> Runner`` for commands (``systemctl``, ``k3s-killall.sh``).
    """

    def __init__(self, kube: Callable[[], Any], lifecycle: Callable[[], Any], runner: Callable[[], Any]) -> None:
        self._make = {"kube": kube, "lifecycle": lifecycle, "runner": runner}
        self._made: dict[str, Any] = {}

    def _get(self, what: str) -> Any:
        if what not in self._made:
            self._made[what] = self._make[what]()
        return self._made[what]

    def kube(self) -> Any:
        """The Kubernetes client (lightkube)."""
        return self._get("kube")

    def kube_if_built(self) -> Any | None:
        """The Kubernetes client when a step already built it, else None (no new credential read)."""
        return self._made.get("kube")

    def lifecycle(self) -> Any:
        """The lifecycle-hook client (:class:`herd_agent.lifecycle.LifecycleHooks`)."""
        return self._get("lifecycle")

    def runner(self) -> Any:
        """The command runner (:mod:`herd_agent.host.runner`)."""
        return self._get("runner")


@dataclass
class LeaveContext:
    """The state a step reads and the services it uses.

    Attributes:
        root: the host root.
        cfg: the effective config.
        ident: the instance's identity (from IMDS, read before the first step).
        node: our Node's name (:func:`herd_agent.k3s.names.node_name`).
        journal: the leave's journal (steps record their results into it).
        clients: Kubernetes, Auto Scaling and the command runner.
        reporter: Events, webhook and metrics (:class:`herd_agent.leave.report.LeaveReporter`).
        notifier: systemd notifications (STATUS, EXTEND_TIMEOUT_USEC).
        save: writes the journal (atomic, 0600); steps call it to keep progress.
        clock: epoch seconds.
        plan: describe the steps instead of running them (``herd-agent plan leave``).
        stopping: the service manager is stopping the watcher (shutdown): a k3s stop is queued,
            never waited for (its stop job is ordered after ours).
        failed: names of the steps that failed so far (the hook result depends on it).
        heartbeats_alive: False once a heartbeat found no active lifecycle action.
    """

    root: HostRoot
    cfg: Config
    ident: Identity
    node: str
    journal: jr.LeaveJournal
    clients: LeaveClients
    reporter: Any
    notifier: Notifier
    save: Callable[[], None]
    clock: Callable[[], float] = time.time
    plan: bool = False
    stopping: bool = False
    failed: list[str] = field(default_factory=list)
    heartbeats_alive: Callable[[], bool] = lambda: True

    @property
    def control_plane(self) -> bool:
        """True on a control-plane instance."""
        return self.ident.is_control_plane

    @property
    def embedded_etcd(self) -> bool:
        """True when k3s runs its own etcd (``etcd.mode: embedded``)."""
        return self.cfg.get("etcd.mode") == "embedded"
