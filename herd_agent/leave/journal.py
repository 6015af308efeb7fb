"""The leave journal (``/var/lib/herd-agent/leave.json``) and the lock that keeps one leave at a time.

The journal records the request (reason, deadline as epoch seconds, the lifecycle hook) and each
step's state (``pending`` → ``started`` → ``done``/``failed``, with how many times it started). A
step is marked ``started`` before it acts and ``done`` after, each write atomic, so a process
killed at any point resumes at the first step not ``done``; steps are idempotent, so one that
was ``started`` but not ``done`` is safe to run again.

The lock is ``flock(2)`` on ``/run/herd-agent/leave.lock``: held for the whole sequence, released
by the kernel when the holder dies, so a crashed leave never blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from herd_agent.errors import ExitCode, HerdError
from herd_agent.host.fsroot import HostRoot

JOURNAL = "/var/lib/herd-agent/leave.json"
LOCK = "/run/herd-agent/leave.lock"
JOURNAL_MODE = 0o600
STEPS = ("cordon", "drain", "etcd", "delete-node", "stop-k3s", "complete-hook")


class LeaveBusy(HerdError):
    """Another leave holds the lock (exit 75, try again)."""

    exit_code = ExitCode.TEMP_FAIL


@dataclass
class StepState:
    """One step: ``status`` (pending/started/done/failed/skipped), start count, detail, times (epoch s)."""

    status: str = "pending"
    starts: int = 0
    detail: str = ""
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class LeaveJournal:
    """The journaled leave.

    Attributes:
        reason: why (``asg-terminate``, ``spot-terminate``, ``shutdown``, ``manual``, …).
        started_at: epoch seconds when the leave began.
        deadline: epoch seconds by which the lifecycle action must be completed (None: unknown).
        hook: the terminating lifecycle hook ``{name, group, heartbeat_timeout_s, global_timeout_s}``
            or None.
        steps: step name → :class:`StepState`.
        pods: pod → ``{outcome, detail}`` from the drain, kept across resumes (saved each drain
            round; a pod that left while the agent was down keeps the outcome it was heading to).
        result: the lifecycle action result sent (CONTINUE/ABANDON) once completed.
        finished_at: epoch seconds when the sequence ended.
        etcd_peers: (external etcd) client URLs of the cluster as seen before our member left, so a
            replay after a crash asks the other members once ours is stopped.
    """

    reason: str
    started_at: float = field(default_factory=time.time)
    deadline: float | None = None
    hook: dict[str, Any] | None = None
    steps: dict[str, StepState] = field(default_factory=lambda: {s: StepState() for s in STEPS})
    pods: dict[str, dict[str, str]] = field(default_factory=dict)
    result: str | None = None
    finished_at: float | None = None
    etcd_peers: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """True when every step is done, failed or skipped."""
        return all(s.status in ("done", "failed", "skipped") for s in self.steps.values())

    @property
    def ended(self) -> bool:
        """True when every step is final and the end (metrics, webhook, ``finished_at``) was written;
        a journal killed between its last step and its end is :attr:`finished` but not ended, and is
        resumed to write the end."""
        return self.finished and self.finished_at is not None

    def to_json(self) -> str:
        """The journal as JSON text."""
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LeaveJournal:
        """Parse journal text (raises ValueError/TypeError/KeyError when it is not one)."""
        data = json.loads(text)
        steps = {name: StepState(**state) for name, state in data.pop("steps").items()}
        for name in STEPS:
            steps.setdefault(name, StepState())
        return cls(steps=steps, **data)


def load(root: HostRoot) -> LeaveJournal | None:
    """The journal under ``root``, or None (missing or unreadable)."""
    try:
        return LeaveJournal.from_json(root.read_text(JOURNAL))
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def save(root: HostRoot, journal: LeaveJournal) -> None:
    """Write the journal atomically, mode 0600, every registered secret and secret shape masked
    (:func:`herd_agent.redact.redact`): step details carry error texts, which may quote anything."""
    from herd_agent.redact import redact

    root.write(JOURNAL, redact(journal.to_json()), mode=JOURNAL_MODE, only_if_changed=False)


class LeaveLock:
    """``with LeaveLock(root):`` — exclusive, non-blocking; raises :class:`LeaveBusy` when held."""

    def __init__(self, root: HostRoot) -> None:
        self.path = root.path(LOCK)
        self._fd: int | None = None

    def __enter__(self) -> LeaveLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaveBusy(f"another leave is running (lock {LOCK} is held)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
