"""Fencing: every write of the leader is checked against its Lease epoch right before it goes out,
and carries the epoch, so a deposed leader never writes and every write names its term.

- :meth:`Fence.check` raises :class:`Deposed` unless the elector still holds the Lease within
  RenewDeadline (monotonic clock) *and* has at least ``margin_s`` left, so a write that starts
  cannot outlive the term by more than its own latency.
- :meth:`Fence.labels` is what the writer records: ``herd.io/leader-epoch`` (leaseTransitions)
  and ``herd.io/leader`` (holder identity, label-safe), put on Helm release records with
  ``helm --labels`` (Helm >= 3.13 stores them on the release Secret) and on applied objects as
  annotations.
- Every allowed write is counted and logged with its epoch (``fence: write ... epoch N``), the
  agent's side of the API server's request log.

The Lease itself gives no fencing (Kubernetes docs, "Leases"; client-go leaderelection's
"does not guarantee that only one client is acting as a leader"): this check is what does.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herd_agent.errors import ExitCode, HerdError
from herd_agent.leader.election import Epoch

log = logging.getLogger(__name__)

EPOCH_LABEL = "herd.io/leader-epoch"
HOLDER_LABEL = "herd.io/leader"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Deposed(HerdError):
    """We no longer hold the Lease (or too little of the term is left): the write was not made."""

    exit_code = ExitCode.TEMP_FAIL


def label_value(text: str) -> str:
    """``text`` as a Kubernetes label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    value = _LABEL_UNSAFE.sub("-", text)[:63].strip("-._")
    return value or "unknown"


@dataclass
class Fence:
    """The write guard handed to every writer.

    Args:
        holding: ``holding() -> bool`` (:meth:`LeaderElector.holding`).
        epoch: ``epoch() -> Epoch | None``.
        remaining_s: ``remaining_s() -> float``: seconds of the term left.
        margin_s: refuse when less than this is left.
    """

    holding: Callable[[], bool]
    epoch: Callable[[], Epoch | None]
    remaining_s: Callable[[], float] = lambda: float("inf")
    margin_s: float = 1.0
    writes: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, what: str) -> Epoch:
        """Allow one write described by ``what`` (e.g. ``helm upgrade apps/web``).

        Returns:
            The epoch the write is made under.
        Raises:
            Deposed: not holding, or less than ``margin_s`` of the term left.
        """
        epoch = self.epoch()
        if epoch is None or not self.holding() or self.remaining_s() < self.margin_s:
            with self._lock:
                self.refused += 1
            log.warning("fence: refused %s: not the leader (any more)", what)
            raise Deposed(f"not the leader any more: refused {what}")
        with self._lock:
            self.writes += 1
        log.info("fence: write %s under epoch %s", what, epoch)
        return epoch

    def recheck(self, what: str) -> None:
        """:meth:`check` again for a write already allowed, silently when still leading.

        Raises:
            Deposed: not holding, or less than ``margin_s`` of the term left.
        """
        if self.epoch() is None or not self.holding() or self.remaining_s() < self.margin_s:
            with self._lock:
                self.refused += 1
            log.warning("fence: refused %s at send: not the leader (any more)", what)
            raise Deposed(f"not the leader any more: refused {what}")

    def labels(self, epoch: Epoch) -> dict[str, str]:
        """The labels/annotations that record ``epoch`` on what is written."""
        return {EPOCH_LABEL: str(epoch.transitions), HOLDER_LABEL: label_value(epoch.holder)}


def guard_http_writes(kube: Any, fence: Fence) -> bool:
    """Re-check ``fence`` inside the HTTP client, right before each write request is sent.

    A write is checked by :meth:`Fence.check` before it is built; a process frozen (SIGSTOP, a
    VM pause) between that check and the send would otherwise send it on waking, after another
    leader took over. An httpx ``request`` event hook runs just before the request goes on the
    wire, so the remaining window is httpx's own sending. Reads and the election's own Lease
    writes (``coordination.k8s.io``) are not fenced.

    Args:
        kube: a ``lightkube.Client`` (its httpx client is lightkube's ``_client._client``).
        fence: the fence of the leader using ``kube``.
    Returns:
        True when the hook was installed (False: not a lightkube client with an httpx client).
    """
    http = getattr(getattr(kube, "_client", None), "_client", None)
    if http is None or not hasattr(http, "event_hooks"):
        return False

    def hook(request: Any) -> None:
        if request.method in ("GET", "HEAD", "OPTIONS") or "/coordination.k8s.io/" in request.url.path:
            return
        fence.recheck(f"{request.method} {request.url.path}")

    hooks = dict(http.event_hooks)
    hooks["request"] = [*hooks.get("request", []), hook]
    http.event_hooks = hooks
    return True


def always(epoch: Epoch) -> Fence:
    """A fence that always allows, for one-shot commands that hold no Lease (tests, ``plan``)."""
    return Fence(holding=lambda: True, epoch=lambda: epoch)
