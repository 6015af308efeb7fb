"""Test hooks: failpoints and the time factor. Both are inert unless their environment variable is
set; nothing in production sets them (docs/development.md, "Test hooks").

``HERD_AGENT_FAILPOINT=<name>``
    :func:`failpoint` with that exact name stops this process with ``SIGSTOP`` so a test can
    ``kill -9`` it at a known point. The leave's points (``docs/leave.md``) are, for every step:

    - ``<step>:before`` — nothing journaled for the step yet;
    - ``<step>:started`` — the journal says ``started``, the step has not acted;
    - ``<step>:acted`` — the step's action ran (the Node is deleted, the member removed, the
      action completed…) but the journal still says ``started``: the replay after a crash here
      proves the step idempotent;
    - ``<step>:after`` — the journal says ``done``.

    A comma-separated list names several points; the first reached stops the process.

``HERD_AGENT_TIME_FACTOR=<float>``
    Wall-clock seconds per AWS second, for a test region that runs AWS's timers fast (the local
    region's ``time_factor``). :func:`scaled` multiplies durations the agent reads from AWS
    (a lifecycle hook's heartbeat and global timeouts, the IMDS token lifetime it asked for) and the
    cadences derived from them, so the agent's default heartbeat cadence runs against the
    region's hook timeouts at the same scale.
    Unset (or unparsable, or outside 0 < f <= 1): 1.0.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

FAILPOINT_ENV = "HERD_AGENT_FAILPOINT"
TIME_FACTOR_ENV = "HERD_AGENT_TIME_FACTOR"


def armed(name: str) -> bool:
    """True when ``HERD_AGENT_FAILPOINT`` names the point ``name``."""
    value = os.environ.get(FAILPOINT_ENV)
    return bool(value) and name in {p.strip() for p in value.split(",")}


def failpoint(name: str) -> None:
    """Stop this process (``SIGSTOP``) when ``HERD_AGENT_FAILPOINT`` names ``name``; else nothing."""
    if armed(name):
        log.warning("failpoint %s reached: stopping (SIGSTOP)", name)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()  # the line must be in the log before the test kills us
            except (OSError, ValueError):
                pass
        os.kill(os.getpid(), signal.SIGSTOP)


def time_factor() -> float:
    """``HERD_AGENT_TIME_FACTOR`` as a float in (0, 1], else 1.0."""
    try:
        value = float(os.environ.get(TIME_FACTOR_ENV, "1"))
    except ValueError:
        return 1.0
    return value if 0.0 < value <= 1.0 else 1.0


def scaled(seconds: float) -> float:
    """AWS seconds → wall-clock seconds for this process (``seconds × time_factor()``)."""
    return seconds * time_factor()
