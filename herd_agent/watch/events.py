"""The typed event a monitor returns, and the malformed-signal rules (docs/leave.md)."""

from __future__ import annotations

from typing import NamedTuple

LEAVE, CORDON, IGNORE = "leave", "cordon", "ignore"
REACTIONS = (LEAVE, CORDON, IGNORE)

# AWS: a spot interruption notice comes two minutes before EC2 acts. A notice we cannot read
# gets this deadline from the moment it was first seen: the earliest EC2 could act.
SPOT_NOTICE_S = 120.0


class TerminationEvent(NamedTuple):
    """One thing a monitor saw that the watcher may react to.

    Attributes:
        reason: the leave reason recorded in the journal, Events and metrics
            (``asg-terminate``, ``spot-terminate``, ``spot-stop``, ``spot-hibernate``,
            ``rebalance``, ``maintenance``).
        key: one reaction per key per watcher process (``spot``, ``asg``, ``rebalance``,
            ``event:<EventId>``).
        reaction: ``leave``, ``cordon`` or ``ignore``.
        deadline: epoch seconds by which the leave must be done, or None (the hook's timeout).
        complete_hook: the leave completes the lifecycle action (the instance is going away);
            False for advisories, after which the instance stays.
        detail: one line for the log.
        malformed: the signal's answer was malformed and the documented rule was applied.
    """

    reason: str
    key: str
    reaction: str
    deadline: float | None
    complete_hook: bool
    detail: str
    malformed: bool = False
