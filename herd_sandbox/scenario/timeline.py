"""The scenario's timeline: what happened, when, and on which instance.

Every part of a run (the scenario steps, the instance "machines", the AWS and Kubernetes
monitors) appends :class:`Entry` records to one :class:`Timeline`. It prints each entry as it
arrives (``  +12.3s  cp1   i-0abc12…  joined (founder) in 8.1 s``), keeps them for the JSON
report and appends them to ``timeline.log`` in the state directory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

SCENARIO = "scenario"
"""The ``who`` of entries about the scenario itself (steps, checks) rather than an instance."""


@dataclass(frozen=True)
class Entry:
    """One timeline line.

    Attributes:
        t: seconds since the run started (wall clock).
        who: the instance's short label (``cp1``, ``w3``), or ``scenario``, ``aws``, ``kube``.
        instance_id: the EC2 instance id, or "" for entries not about one instance.
        kind: ``step``, ``instance``, ``aws``, ``kube``, ``etcd``, ``kubectl``, ``check`` or ``error``.
        text: what happened, one line for people.
    """

    t: float
    who: str
    instance_id: str
    kind: str
    text: str

    def render(self, width: int = 8) -> str:
        """The entry as one readable line: ``+SECONDS  WHO  INSTANCE  TEXT``."""
        marker = "==" if self.kind == "step" else ("!!" if self.kind == "error" else "  ")
        instance = self.instance_id or ""
        return f"{marker}{self.t:7.1f}s  {self.who:<{width}}  {instance:<19}  {self.text}"


class Timeline:
    """A thread-safe list of :class:`Entry`, printed as it grows.

    Args:
        out: stream to print entries to as they arrive (None: print nothing).
        log_file: file to append every rendered entry to (None: none).
        clock: monotonic clock, seconds (tests may pass their own).
    """

    def __init__(self, out: TextIO | None = None, log_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self.started_at = time.time()
        self._out = out
        self._log_file = log_file
        self._mu = threading.Lock()
        self._entries: list[Entry] = []

    def now(self) -> float:
        """Seconds since the timeline started."""
        return self._clock() - self._start

    def add(self, who: str, text: str, *, instance_id: str = "", kind: str = "instance") -> Entry:
        """Record (and print) one entry; returns it."""
        with self._mu:
            entry = Entry(round(self.now(), 2), who, instance_id, kind, text)
            self._entries.append(entry)
            line = entry.render()
            if self._out is not None:
                print(line, file=self._out, flush=True)
            if self._log_file is not None:
                with open(self._log_file, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            return entry

    def step(self, text: str) -> Entry:
        """Record the start of a scenario step."""
        return self.add(SCENARIO, text, kind="step")

    def error(self, text: str, who: str = SCENARIO, instance_id: str = "") -> Entry:
        """Record a failure."""
        return self.add(who, text, instance_id=instance_id, kind="error")

    def entries(self, kind: str | None = None, who: str | None = None) -> list[Entry]:
        """A copy of the entries so far (optionally of one kind or one ``who``)."""
        with self._mu:
            return [e for e in self._entries if (kind is None or e.kind == kind) and (who is None or e.who == who)]

    def to_json(self) -> list[dict[str, Any]]:
        """Every entry as a plain dict (``t``, ``who``, ``instance_id``, ``kind``, ``text``)."""
        return [asdict(e) for e in self.entries()]
