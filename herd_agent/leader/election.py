"""Leader election over a ``coordination.k8s.io/v1`` Lease, with client-go's algorithm.

Source: client-go ``tools/leaderelection/leaderelection.go`` (``tryAcquireOrRenew``, ``acquire``,
``renew``, ``release``) and ``resourcelock/leaselock.go``. What we keep from it:

- Defaults LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s, JitterFactor 1.2, and the
  rule LeaseDuration > RenewDeadline > JitterFactor × RetryPeriod (a bad setting is a
  :class:`~herd_agent.errors.ConfigError`, never ``sys.exit`` as kubernetes-client/python does).
- Observed times on the local monotonic clock (``time.monotonic``), never the Lease's
  ``renewTime``: a candidate takes over only when the record it observed has not changed for a
  whole LeaseDuration *of its own clock*.
- Acquire and renew by ``replace`` (HTTP PUT) carrying the ``resourceVersion`` last read; a 409
  Conflict means someone else wrote first: this round is lost. Create on 404 (409 = lost too).
- ``leaseTransitions`` is incremented on every change of holder (takeover, or acquiring a
  released Lease); it is the **epoch**, the fencing token of everything the leader writes.
- The leader stops working as soon as RenewDeadline passes since its last successful renew
  (:meth:`LeaderElector.holding` turns False before any other candidate may take over, which
  needs a full LeaseDuration without a change).
- On a clean stop the Lease is released (``holderIdentity`` cleared, ``leaseDurationSeconds`` 1),
  so the next candidate takes over at its next retry instead of after a LeaseDuration.

A Lease by itself guarantees no fencing (Kubernetes docs, "Leases"); :mod:`herd_agent.leader.fence`
adds the check before every write and the epoch recorded on what is written.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from herd_agent.errors import ConfigError

log = logging.getLogger(__name__)

LEASE_DURATION_S = 15.0
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0
JITTER_FACTOR = 1.2


@dataclass(frozen=True)
class Epoch:
    """Who leads and in which term: ``holder`` (identity) and ``transitions`` (leaseTransitions
    after the holder acquired the Lease). Ordered by ``transitions``; rendered as its number."""

    holder: str
    transitions: int

    def __str__(self) -> str:
        return str(self.transitions)


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that the election reads (``LeaderElectionRecord``)."""

    holder: str
    lease_duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int


def check_timings(lease_duration_s: float, renew_deadline_s: float, retry_period_s: float) -> None:
    """client-go's ``NewLeaderElector`` rules.

    Raises:
        ConfigError: LeaseDuration <= RenewDeadline, RenewDeadline <= 1.2 × RetryPeriod, or a
            value below 1 s (one line per broken rule, naming the keys).
    """
    problems = []
    if lease_duration_s <= renew_deadline_s:
        problems.append(f"leader.lease_duration_s: must be greater than leader.renew_deadline_s "
                        f"(got {lease_duration_s:g} <= {renew_deadline_s:g})")
    if renew_deadline_s <= JITTER_FACTOR * retry_period_s:
        problems.append(f"leader.renew_deadline_s: must be greater than {JITTER_FACTOR} x leader.retry_period_s "
                        f"(got {renew_deadline_s:g} <= {JITTER_FACTOR * retry_period_s:g})")
    if min(lease_duration_s, renew_deadline_s, retry_period_s) < 1:
        problems.append("leader: lease_duration_s, renew_deadline_s and retry_period_s must be at least 1 s")
    if problems:
        raise ConfigError(problems)


def _micro_time(now: float | None = None) -> str:
    """A MicroTime (RFC 3339 with microseconds, UTC) for the Lease's acquireTime/renewTime."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _status_code(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return getattr(status, "code", None)


class LeaderElector:
    """One candidate for the Lease ``namespace/name``.

    Args:
        client: a ``lightkube.Client``.
        namespace, name: the Lease.
        identity: this candidate's unique holder identity (hostname plus a per-process suffix, so
            a restarted process is a new holder and bumps the epoch).
        lease_duration_s, renew_deadline_s, retry_period_s: client-go's timings (see
            :func:`check_timings`).
        clock: monotonic seconds (tests may pass their own).
        rand: ``random()`` in [0, 1) for the jitter.

    Raises:
        ConfigError: timings break client-go's rules.
    """

    def __init__(self, client: Any, namespace: str, name: str, identity: str, *,
                 lease_duration_s: float = LEASE_DURATION_S, renew_deadline_s: float = RENEW_DEADLINE_S,
                 retry_period_s: float = RETRY_PERIOD_S, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        check_timings(lease_duration_s, renew_deadline_s, retry_period_s)
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.rand = rand
        self._lock = threading.Lock()
        self._observed: LeaseRecord | None = None
        self._observed_rv: str | None = None
        self._observed_time: float | None = None
        self._renewed_at: float | None = None  # monotonic time of our last successful acquire/renew
        self._epoch: Epoch | None = None
        self.last_round: float | None = None  # monotonic start of the last acquire/renew round (watchdog)

    # -- what the rest of the leader asks ----------------------------------------------------------

    def holding(self) -> bool:
        """True while we hold the Lease *and* our last successful renew is younger than
        RenewDeadline on the monotonic clock (a process frozen by SIGSTOP wakes up not holding)."""
        with self._lock:
            return (self._epoch is not None and self._renewed_at is not None
                    and self.clock() - self._renewed_at < self.renew_deadline_s)

    def epoch(self) -> Epoch | None:
        """Our epoch while we lead (None otherwise, even before the deadline is checked)."""
        with self._lock:
            return self._epoch

    def remaining_s(self) -> float:
        """Seconds left before RenewDeadline passes without a renew (0 when not leading)."""
        with self._lock:
            if self._epoch is None or self._renewed_at is None:
                return 0.0
            return max(0.0, self.renew_deadline_s - (self.clock() - self._renewed_at))

    def observed_holder(self) -> str | None:
        """The holder identity last seen on the Lease (None before the first read)."""
        with self._lock:
            return self._observed.holder if self._observed else None

    # -- one round ---------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round of client-go's ``tryAcquireOrRenew``: read, decide, write with resourceVersion.

        Returns:
            True when we hold the Lease after this round (acquired or renewed).
        Never raises for API errors: a failed round is a lost round (logged at debug).
        """
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        now = self.clock()
        self.last_round = now
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
        except Exception as exc:
            if _status_code(exc) != 404:
                log.debug("lease %s/%s: get failed: %s", self.namespace, self.name, exc)
                return False
            stamp = _micro_time()
            record = LeaseRecord(self.identity, int(self.lease_duration_s), stamp, stamp, 0)
            try:
                created = self.client.create(Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                                                   spec=self._spec(LeaseSpec, record)))
            except Exception as exc2:  # 409 AlreadyExists: another candidate created it first
                log.debug("lease %s/%s: create failed: %s", self.namespace, self.name, exc2)
                return False
            self._took(record, created.metadata.resourceVersion, now)
            return True

        spec = lease.spec
        current = LeaseRecord(spec.holderIdentity or "", int(spec.leaseDurationSeconds or 0),
                              _fmt(spec.acquireTime), _fmt(spec.renewTime), int(spec.leaseTransitions or 0))
        with self._lock:
            if current != self._observed:
                self._observed = current
                self._observed_time = now
            self._observed_rv = lease.metadata.resourceVersion
            observed_time = self._observed_time or now
        if (current.holder and current.holder != self.identity
                and observed_time + max(current.lease_duration_s, 1) > now):
            return False  # someone else holds an unexpired Lease (expiry judged on our own clock)

        stamp = _micro_time()
        if current.holder == self.identity:
            record = LeaseRecord(self.identity, int(self.lease_duration_s), current.acquire_time, stamp,
                                 current.transitions)
        else:
            record = LeaseRecord(self.identity, int(self.lease_duration_s), stamp, stamp, current.transitions + 1)
        lease.spec = self._spec(LeaseSpec, record)
        try:
            updated = self.client.replace(lease)  # PUT with metadata.resourceVersion: 409 if it moved
        except Exception as exc:
            log.debug("lease %s/%s: replace failed (%s): %s", self.namespace, self.name, _status_code(exc), exc)
            return False
        self._took(record, updated.metadata.resourceVersion, now)
        return True

    @staticmethod
    def _spec(spec_cls: Any, record: LeaseRecord) -> Any:
        return spec_cls(holderIdentity=record.holder or None, leaseDurationSeconds=record.lease_duration_s,
                        acquireTime=record.acquire_time, renewTime=record.renew_time,
                        leaseTransitions=record.transitions)

    def _took(self, record: LeaseRecord, rv: str | None, now: float) -> None:
        with self._lock:
            self._observed = record
            self._observed_rv = rv
            self._observed_time = now
            self._renewed_at = now
            if self._epoch is None or self._epoch.transitions != record.transitions:
                self._epoch = Epoch(self.identity, record.transitions)

    def _lose(self) -> None:
        with self._lock:
            self._epoch = None
            self._renewed_at = None

    # -- the loops ---------------------------------------------------------------------------------

    def jittered_retry_s(self) -> float:
        """client-go's ``wait.Jitter(RetryPeriod, 1.2)``: RetryPeriod + random × 1.2 × RetryPeriod."""
        return self.retry_period_s + self.rand() * JITTER_FACTOR * self.retry_period_s

    def acquire(self, stop: threading.Event) -> bool:
        """Try every jittered RetryPeriod until we hold the Lease (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self.try_acquire_or_renew():
                log.info("became leader of lease %s/%s (epoch %s)", self.namespace, self.name, self._epoch)
                return True
            stop.wait(self.jittered_retry_s())
        return False

    def renew(self, stop: threading.Event) -> None:
        """Renew every RetryPeriod; return once a renew has failed for RenewDeadline (leadership
        lost: :meth:`holding` is already False) or ``stop`` is set (still leading: call :meth:`release`)."""
        while not stop.is_set():
            started = self.clock()
            while True:  # client-go: PollImmediateUntil(RetryPeriod, tryAcquireOrRenew, RenewDeadline)
                if self.try_acquire_or_renew():
                    break
                if self.clock() - started >= self.renew_deadline_s or not self.holding():
                    log.warning("lost lease %s/%s: no renew for %.0f s", self.namespace, self.name,
                                self.renew_deadline_s)
                    self._lose()
                    return
                if stop.wait(self.retry_period_s):
                    return
            stop.wait(self.retry_period_s)

    def release(self) -> bool:
        """Give the Lease up if we still hold it: clear ``holderIdentity`` (client-go ReleaseOnCancel).

        Returns:
            True when the Lease was released by us.
        """
        from lightkube.resources.coordination_v1 import Lease

        if not self.holding():
            self._lose()
            return False
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
            if (lease.spec.holderIdentity or "") != self.identity:
                return False
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            lease.spec.renewTime = _micro_time()
            self.client.replace(lease)
            log.info("released lease %s/%s", self.namespace, self.name)
            return True
        except Exception as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
            return False
        finally:
            self._lose()


def _fmt(value: Any) -> str | None:
    """A MicroTime from lightkube (datetime or str) as the string we write back."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)
