"""Starting and stopping the k3s unit: the one place that runs ``systemctl`` on it.

The unit is :func:`herd_agent.k3s.names.unit_for` (``k3s.service`` on a server,
``k3s-agent.service`` on an agent). The join enables it and queues its start
(``systemctl start --no-block``: the join's config unit is ordered before k3s, so waiting for the
start would deadlock — systemd.unit(5) ordering); the ready wait restarts it when the control plane
it joins through was replaced; the leave and the watcher stop it.

Every call goes through a runner (``run(argv, timeout=SECONDS)``, :class:`herd_agent.host.runner.Runner`),
so plan mode passes a recording runner and tests a fake one.

Raises (every function): :class:`~herd_agent.errors.CommandError` when ``systemctl`` exits
non-zero or times out.
"""

from __future__ import annotations

from typing import Any, Protocol

from herd_agent.k3s.names import unit_for

SYSTEMCTL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 120.0
"""k3s' own unit sets ``TimeoutStopSec`` unbounded; the agent gives systemd two minutes."""


class RunnerLike(Protocol):
    """What the service calls need of a runner."""

    def run(self, argv: Any, **kwargs: Any) -> Any: ...  # noqa: D102


def enable(runner: RunnerLike, control_plane: bool) -> str:
    """``systemctl enable`` the k3s unit of this role; returns the unit name."""
    unit = unit_for(control_plane)
    runner.run(["systemctl", "enable", unit], timeout=SYSTEMCTL_TIMEOUT_S)
    return unit


def start(runner: RunnerLike, control_plane: bool) -> str:
    """Queue the start of the k3s unit (``--no-block``: returns once queued); returns the unit."""
    unit = unit_for(control_plane)
    runner.run(["systemctl", "start", "--no-block", unit], timeout=SYSTEMCTL_TIMEOUT_S)
    return unit


def restart(runner: RunnerLike, control_plane: bool) -> str:
    """Queue a restart of the k3s unit (``--no-block``); returns the unit."""
    unit = unit_for(control_plane)
    runner.run(["systemctl", "restart", "--no-block", unit], timeout=SYSTEMCTL_TIMEOUT_S)
    return unit


def queue_stop(runner: RunnerLike, control_plane: bool) -> str:
    """Queue the stop of the k3s unit (``systemctl stop --no-block``) without waiting; returns the unit.

    For shutdown: k3s' stop job is then ordered after the caller's own unit, so waiting for it
    would deadlock until systemd's timeout.
    """
    unit = unit_for(control_plane)
    runner.run(["systemctl", "stop", "--no-block", unit], timeout=SYSTEMCTL_TIMEOUT_S)
    return unit


def stop(runner: RunnerLike, control_plane: bool, *, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Stop the k3s unit and wait for it (its pods keep running: k3s' unit has ``KillMode=process``).

    Returns the unit name.
    """
    unit = unit_for(control_plane)
    runner.run(["systemctl", "stop", unit], timeout=timeout_s)
    return unit
