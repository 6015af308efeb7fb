"""Fencing: every write of the leader is checked against its Lease epoch right before it goes out,
and carries the epoch, so a deposed leader never writes and every write names its term.

- :meth:`Fence.check` raises :class:`Deposed` unless the elector still holds the Lease within
  RenewDeadline (monotonic clock) *and* has at least ``margin_s`` left, so a write that starts
  cannot outlive the term by more than its own latency.
- :meth:`Fence.labels` is what the writer records: ``herd.io/leader-epoch`` (leaseTransitions)
  and ``herd.io/leader`` (holder identity, label-safe), put on Helm release records with
  ``helm --labels`` (Helm >= 3.13 stores them on the release Secret) and on applied objects as
  annotations.
- :class:`FencedTransport` checks again right before a write goes on the wire: under the
  leader's own API client, and under the upstream client of the fencing proxy through which helm
  reaches the API server (:mod:`herd_agent.leader.proxy`).
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

import httpx2

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
        """Allow one write described by ``what`` (e.g. ``helm upgrade apps/web``), counted and logged.

        Returns:
            The epoch the write is made under.
        Raises:
            Deposed: not holding, or less than ``margin_s`` of the term left.
        """
        epoch = self._refuse_unless_leading(what, "")
        with self._lock:
            self.writes += 1
        log.info("fence: write %s under epoch %s", what, epoch)
        return epoch

    def recheck(self, what: str) -> None:
        """:meth:`check` again, silently, for a write already allowed or passing through (the
        HTTP client's send, helm's requests through :mod:`herd_agent.leader.proxy`).

        Raises:
            Deposed: not holding, or less than ``margin_s`` of the term left.
        """
        self._refuse_unless_leading(what, " at send")

    def _refuse_unless_leading(self, what: str, where: str) -> Epoch:
        epoch = self.epoch()
        if epoch is None or not self.holding() or self.remaining_s() < self.margin_s:
            with self._lock:
                self.refused += 1
            log.warning("fence: refused %s%s: not the leader (any more)", what, where)
            raise Deposed(f"not the leader any more: refused {what}")
        return epoch

    def labels(self, epoch: Epoch) -> dict[str, str]:
        """The labels/annotations that record ``epoch`` on what is written."""
        return {EPOCH_LABEL: str(epoch.transitions), HOLDER_LABEL: label_value(epoch.holder)}


def is_fenced_write(method: str, path: str) -> bool:
    """True for a request the fence must allow: every method but GET, HEAD and OPTIONS, except
    the election's own Lease writes (``/apis/coordination.k8s.io/``), which the Lease's
    resourceVersion already guards."""
    return method.upper() not in ("GET", "HEAD", "OPTIONS") and "/coordination.k8s.io/" not in path


class FencedTransport(httpx2.BaseTransport):
    """An httpx transport that re-checks the fence right before each write request goes on the wire.

    A write is checked by :meth:`Fence.check` before it is built; a process frozen (SIGSTOP, a VM
    pause) between that check and the send would otherwise send it on waking, after another
    leader took over. The transport is the last step before the connection pool writes the
    request, so what is left is the socket write itself. Reads and Lease writes pass
    (:func:`is_fenced_write`). Used under the leader's lightkube client and under the upstream
    client of :class:`herd_agent.leader.proxy.FencingProxy` (helm's requests).

    Args:
        inner: the transport that sends (an ``httpx2.HTTPTransport`` with the cluster's TLS).
        recheck: ``recheck(what)``, normally :meth:`Fence.recheck`; raises :class:`Deposed`, which
            reaches the caller of ``Client.send`` unchanged.
    """

    def __init__(self, inner: httpx2.BaseTransport, recheck: Callable[[str], None]) -> None:
        self.inner = inner
        self.recheck = recheck

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Re-check the fence for a write, then send through :attr:`inner`."""
        if is_fenced_write(request.method, request.url.path):
            self.recheck(f"{request.method} {request.url.path}")
        return self.inner.handle_request(request)

    def close(self) -> None:
        """Close :attr:`inner`."""
        self.inner.close()


def always(epoch: Epoch) -> Fence:
    """A fence that always allows, for one-shot commands that hold no Lease (tests, ``plan``)."""
    return Fence(holding=lambda: True, epoch=lambda: epoch)
