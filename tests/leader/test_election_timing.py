"""When a candidate tries: at the moment the observed record expires on its own clock, never
before; polling every jittered RetryPeriod while the watch is down; a renew seen late restarts
the count. A fake Lease API (resourceVersion, 409 on a stale one, a watch fed by the test) and an
injected monotonic clock make every instant exact; the last test watches the emulated API server.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.coordination_v1 import Lease

from herd_agent.leader.election import LeaderElector

from .conftest import lease_client


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _api_error(code: int, reason: str) -> ApiError:
    return ApiError(status=Status(code=code, reason=reason, message=reason))


class FakeLeaseApi:
    """One Lease with Kubernetes' write rules (replace needs the current resourceVersion, else 409
    Conflict) and watches that get every later write, or an error the test sends."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rv = 0
        self.lease: Lease | None = None
        self.watches: list[queue.Queue[Any]] = []
        self.writes: list[tuple[float, str]] = []  # (clock, holder) of each successful write

    def put(self, holder: str, transitions: int = 0) -> None:
        """Someone writes the Lease (a renew by ``holder``)."""
        lease = self.lease or Lease(metadata=ObjectMeta(name="lead", namespace="kube-system"), spec=LeaseSpec())
        lease = copy.deepcopy(lease)
        lease.spec = LeaseSpec(holderIdentity=holder, leaseDurationSeconds=15, leaseTransitions=transitions,
                               renewTime=f"2026-12-02T10:00:{self.clock.now % 60:09.6f}Z")
        self._store(lease)

    def _store(self, lease: Lease) -> Lease:
        self.rv += 1
        lease.metadata.resourceVersion = str(self.rv)
        self.lease = copy.deepcopy(lease)
        self.writes.append((self.clock.now, lease.spec.holderIdentity or ""))
        for w in self.watches:
            w.put(("MODIFIED", copy.deepcopy(lease)))
        return copy.deepcopy(lease)

    def get(self, res: Any, name: str, namespace: str) -> Lease:
        if self.lease is None:
            raise _api_error(404, "NotFound")
        return copy.deepcopy(self.lease)

    def replace(self, lease: Lease) -> Lease:
        if self.lease is None or lease.metadata.resourceVersion != self.lease.metadata.resourceVersion:
            raise _api_error(409, "Conflict")
        return self._store(copy.deepcopy(lease))

    def create(self, lease: Lease) -> Lease:
        if self.lease is not None:
            raise _api_error(409, "AlreadyExists")
        return self._store(copy.deepcopy(lease))

    def watch(self, res: Any, **kwargs: Any) -> Iterator[tuple[str, Lease]]:
        q: queue.Queue[Any] = queue.Queue()
        self.watches.append(q)
        while True:
            item = q.get()
            if isinstance(item, Exception):
                self.watches.remove(q)
                raise item
            yield item

    def break_watches(self) -> None:
        for w in list(self.watches):
            w.put(ConnectionError("watch stream reset"))


def await_(cond: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def candidate(api: FakeLeaseApi, clock: Clock) -> LeaderElector:
    return LeaderElector(api, "kube-system", "lead", "b", clock=clock, rand=lambda: 0.999)


def held_by_a() -> tuple[Clock, FakeLeaseApi, LeaderElector]:
    """A Lease held by ``a`` (written at 1000) and candidate ``b`` that has not looked yet."""
    clock = Clock()
    api = FakeLeaseApi(clock)
    api.put("a")
    return clock, api, candidate(api, clock)


def run_acquire(b: LeaderElector, clock: Clock) -> list[float]:
    """``b.acquire`` with each pause taken at once on the fake clock; returns the pauses."""
    pauses: list[float] = []

    def pause(stop: threading.Event, seconds: float) -> bool:
        pauses.append(seconds)
        clock.now += seconds
        return False

    b._pause = pause  # type: ignore[method-assign]
    assert b.acquire(threading.Event())
    return pauses


def test_candidate_acquires_exactly_when_the_observed_renew_expires_never_before() -> None:
    clock, api, b = held_by_a()
    b._start_watch()
    assert not b.try_acquire_or_renew()  # observes a's record at 1000
    await_(lambda: api.watches, "b's watch")
    clock.now = 1003.0
    api.put("a")  # a renews; b's watch sees it at 1003
    await_(lambda: b._observed_time == 1003.0, "the renew observed through the watch")
    assert b._watching
    assert b.next_try_s() == 15.0  # the expiry on b's clock, not the next jittered retry (<= 4.4 s)
    clock.now = 1017.999
    assert not b.try_acquire_or_renew()
    assert api.writes[-1][1] == "a"
    clock.now = 1017.0
    pauses = run_acquire(b, clock)
    assert api.writes[-1] == (1018.0, "b")  # acquired at observed + LeaseDuration exactly
    assert b.epoch() is not None and b.epoch().transitions == 1
    assert all(p <= 4.4 for p in pauses)  # the watch restarted with acquire: polls until its first event


def test_a_broken_watch_falls_back_to_polling_every_jittered_retry() -> None:
    clock, api, b = held_by_a()
    b._start_watch()
    assert not b.try_acquire_or_renew()
    await_(lambda: api.watches, "b's watch")
    api.put("a")
    await_(lambda: b._watching, "the watch delivering")
    assert b.next_try_s() == 15.0
    api.break_watches()
    await_(lambda: not b._watching, "the watch marked down")
    assert b.next_try_s() == 2 + 0.999 * 1.2 * 2  # client-go's jittered RetryPeriod
    b._stop_watch()


def test_a_renew_seen_late_restarts_the_count_from_when_it_is_seen() -> None:
    clock = Clock()
    api = FakeLeaseApi(clock)
    api.put("a")
    b = LeaderElector(api, "kube-system", "lead", "b", clock=clock, rand=lambda: 0.999, watch=False)
    assert not b.try_acquire_or_renew()  # observed at 1000
    clock.now = 1003.0
    api.put("a")  # nobody watches: b does not see this renew yet
    clock.now = 1012.0
    assert not b.try_acquire_or_renew()  # seen at 1012, not 1003
    clock.now = 1026.999
    assert not b.try_acquire_or_renew()
    clock.now = 1026.0
    pauses = run_acquire(b, clock)
    assert api.writes[-1] == (1027.0, "b")
    assert pauses and all(p <= 4.4 for p in pauses)


def test_a_renew_delivered_late_by_the_watch_counts_from_its_arrival() -> None:
    clock, api, b = held_by_a()
    assert not b.try_acquire_or_renew()
    b._start_watch()
    await_(lambda: api.watches, "b's watch")
    held: queue.Queue[Any] = queue.Queue()
    live = api.watches[0]
    api.watches[0] = held  # the stream stalls: the event is written but not yet delivered
    clock.now = 1003.0
    api.put("a")
    clock.now = 1008.0
    live.put(held.get())  # delivered 5 s late
    api.watches[0] = live
    await_(lambda: b._observed_time == 1008.0, "the late event observed")
    assert b.next_try_s() == 15.0
    b._stop_watch()


def test_a_release_seen_through_the_watch_is_tried_at_once() -> None:
    clock, api, b = held_by_a()
    woken = threading.Event()
    b._pause = lambda stop, seconds: (woken.set(), b._wake.wait(30))[1]  # type: ignore[method-assign]
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(b.acquire(threading.Event())))
    t.start()
    woken.wait(30)
    await_(lambda: api.watches, "b's watch")
    api.put("", transitions=0)  # a releases (holderIdentity cleared)
    t.join(30)
    assert got == [True]
    assert api.writes[-1] == (1000.0, "b")


def test_a_watching_candidate_turns_its_loop_on_every_renew_for_the_watchdog() -> None:
    clock, api, b = held_by_a()
    stop = threading.Event()
    t = threading.Thread(target=b.acquire, args=(stop,))
    t.start()
    try:
        await_(lambda: api.watches and b.last_round == 1000.0, "b's first try and its watch")
        for step in range(5):  # a renews every 2 s: b never tries, but its loop turns on each event
            clock.now += 2
            api.put("a")
            await_(lambda: b.last_round == clock.now, f"b's loop turning on renew {step}")
    finally:
        stop.set()
        t.join(30)
    assert api.writes[-1][1] == "a"


def test_the_watch_on_the_emulated_api_observes_each_renew(kube_sandbox: Any) -> None:
    clock = Clock()
    a = LeaderElector(lease_client(kube_sandbox.admin_kubeconfig), "kube-system", "lead", "a", clock=clock)
    b = LeaderElector(lease_client(kube_sandbox.admin_kubeconfig), "kube-system", "lead", "b", clock=clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    b._start_watch()
    try:
        for step in range(3):
            clock.now += 2
            assert a.try_acquire_or_renew()
            await_(lambda: b._observed_time == clock.now and b._watching, f"renew {step} seen by b's watch")
        assert b.next_try_s() == 15.0
    finally:
        b._stop_watch()
