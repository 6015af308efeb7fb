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

One deliberate deviation, in *when* a candidate looks, never in *what* it decides: client-go's
candidate polls every jittered RetryPeriod (2–4.4 s), so it notices the leader's last renew up to
one jittered retry late and acquires at the first jittered retry after the expiry: a takeover
lands anywhere up to LeaseDuration + 2 × 2.2 × RetryPeriod after the leader died. Here a
candidate also keeps a Kubernetes watch on the one Lease (``fieldSelector=metadata.name``, from
the ``resourceVersion`` it read; lightkube resumes at the last version when the stream ends and
re-lists on 410 Gone), so a change is observed when it happens, and it schedules its next
``tryAcquireOrRenew`` at the moment the observed record expires on its own monotonic clock,
instead of the next jittered retry after it. While the watch is down (connection refused,
forbidden, stalled before its first event) the candidate also polls every jittered RetryPeriod,
as client-go does. Why this is safe:

- the decision is unchanged: every try still reads the Lease (GET) and takes it only when the
  record is the one observed a whole LeaseDuration ago on our clock, by a replace carrying the
  resourceVersion (409 = lost);
- an observation can only be *later* than the write it reports (a watch event or a GET reply
  arrives after the write committed), and a later observation only moves our expiry later; a
  renew seen late (a slow stream, a dropped watch) restarts the count when it is seen;
- the holder stops working RenewDeadline after the *start* of its last successful renew round,
  which is before the write committed, so the 5 s between RenewDeadline and LeaseDuration is
  still the margin (for clock-rate drift and scheduling), exactly as in client-go; the watch
  only removes the up-to-4.4 s lateness *after* the expiry, which guarded nothing.

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
        watch: keep a watch on the Lease while a candidate (see the module docstring); False
            polls every jittered RetryPeriod only, as client-go.

    Raises:
        ConfigError: timings break client-go's rules.
    """

    def __init__(self, client: Any, namespace: str, name: str, identity: str, *,
                 lease_duration_s: float = LEASE_DURATION_S, renew_deadline_s: float = RENEW_DEADLINE_S,
                 retry_period_s: float = RETRY_PERIOD_S, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random, watch: bool = True) -> None:
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
        # monotonic start of the last acquire/renew round, or of the candidate loop turning on a Lease
        # event (a watching candidate may not try for as long as the leader renews): the watchdog's beat
        self.last_round: float | None = None
        self.watch = watch
        self._wake = threading.Event()  # set by the watch on every Lease event
        self._watching = False  # the watch delivered an event since it last failed
        self._watch_done: threading.Event | None = None

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

        current = _record(lease)
        observed_time = self._observe(current, lease.metadata.resourceVersion, now)
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

    def _observe(self, current: LeaseRecord, rv: str | None, now: float) -> float:
        """Note the record read (by a GET or the watch) at monotonic ``now``; a record different
        from the one observed last restarts the count. Returns the time the record was first seen."""
        with self._lock:
            if current != self._observed:
                self._observed = current
                self._observed_time = now
            self._observed_rv = rv
            return self._observed_time if self._observed_time is not None else now

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

    def next_try_s(self) -> float:
        """Seconds from now until a candidate's next ``tryAcquireOrRenew``.

        Another holder's record: the moment it expires on our clock (observed time +
        ``leaseDurationSeconds``), or sooner, the next jittered RetryPeriod, while the watch is down.
        A free record, our own, or none read yet: the next jittered RetryPeriod (client-go).
        """
        with self._lock:
            rec, seen, watching = self._observed, self._observed_time, self._watching
        retry = self.jittered_retry_s()
        if rec is None or seen is None or not rec.holder or rec.holder == self.identity:
            return retry
        expiry = seen + max(rec.lease_duration_s, 1) - self.clock()
        return max(0.0, expiry if watching else min(expiry, retry))

    def acquire(self, stop: threading.Event) -> bool:
        """Try until we hold the Lease (True) or ``stop`` is set (False): at once, then at each
        :meth:`next_try_s`, and at once when the watch shows the Lease released."""
        if self.watch:
            self._start_watch()
        try:
            while not stop.is_set():
                if self.try_acquire_or_renew():
                    log.info("became leader of lease %s/%s (epoch %s)", self.namespace, self.name, self._epoch)
                    return True
                self._wait_next_try(stop)
            return False
        finally:
            self._stop_watch()

    def _wait_next_try(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            delay = self.next_try_s()
            if delay <= 0 or not self._pause(stop, delay):
                return  # the observed record expired (or the retry is due)
            self.last_round = self.clock()  # the loop turned on a Lease event: alive for the watchdog
            with self._lock:  # woken by a Lease event: a released Lease is tried at once
                if self._observed is not None and not self._observed.holder:
                    return

    def _pause(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` of :attr:`clock`; True as soon as the watch reports a Lease event,
        False when the time is up or ``stop`` is set."""
        end = self.clock() + seconds
        while not stop.is_set():
            left = end - self.clock()
            if left <= 0:
                return False
            if self._wake.wait(min(left, 0.25)):
                return True
        return False

    # -- the watch ---------------------------------------------------------------------------------

    def _start_watch(self) -> None:
        self._stop_watch()
        done = threading.Event()
        self._watch_done = done
        threading.Thread(target=self.watch_lease, args=(done,), name="lease-watch", daemon=True).start()

    def _stop_watch(self) -> None:
        if self._watch_done is not None:
            self._watch_done.set()
            self._watch_done = None
        with self._lock:
            self._watching = False

    def _watch_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._watching = False
        log.debug("lease %s/%s: watch failed, polling every retry: %s", self.namespace, self.name, exc)

    def watch_lease(self, done: threading.Event) -> None:
        """Watch the one Lease until ``done`` is set, observing every change when it arrives.

        Kubernetes' watch: ``GET .../leases?watch=true&fieldSelector=metadata.name=<name>`` from
        the resourceVersion last read; lightkube reconnects at the last resourceVersion when the
        stream ends and starts over with a fresh list (ADDED events) on 410 Gone. Any failure
        marks the watch down (the candidate polls) and is retried after RetryPeriod.
        """
        from lightkube.resources.coordination_v1 import Lease
        from lightkube.types import OnErrorAction, OnErrorResult

        def on_error(exc: Exception, count: int) -> OnErrorResult:
            self._watch_failed(exc)
            if done.is_set():
                return OnErrorResult(OnErrorAction.STOP)
            return OnErrorResult(OnErrorAction.RETRY, sleep=self.retry_period_s)

        while not done.is_set():
            with self._lock:
                rv = self._observed_rv
            try:
                for kind, lease in self.client.watch(Lease, namespace=self.namespace,
                                                     fields={"metadata.name": self.name},
                                                     resource_version=rv, on_error=on_error):
                    if done.is_set():
                        return
                    if kind == "BOOKMARK":
                        continue
                    now = self.clock()
                    with self._lock:
                        self._watching = True
                    if kind == "DELETED":
                        self._observe(LeaseRecord("", 0, None, None, 0), None, now)
                    else:
                        self._observe(_record(lease), lease.metadata.resourceVersion, now)
                    self._wake.set()
            except Exception as exc:  # connection refused, decoding...: poll, retry the watch later
                self._watch_failed(exc)
                with self._lock:
                    self._observed_rv = None  # start over from a fresh list
                done.wait(self.retry_period_s)

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


def _record(lease: Any) -> LeaseRecord:
    """The :class:`LeaseRecord` of a lightkube ``Lease``."""
    spec = lease.spec
    return LeaseRecord(spec.holderIdentity or "", int(spec.leaseDurationSeconds or 0),
                       _fmt(spec.acquireTime), _fmt(spec.renewTime), int(spec.leaseTransitions or 0))


def _fmt(value: Any) -> str | None:
    """A MicroTime from lightkube (datetime or str) as the string we write back."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)
