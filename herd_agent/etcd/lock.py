"""The cluster-wide membership lock: an etcd lease plus a compare-and-create transaction.

Acquire: grant a lease of ``ttl_s`` seconds, then ``Txn(if create_revision(key) == 0 then
put(key, holder, lease) else range(key))``. Whoever creates the key holds the lock; the others
retry with backoff until their deadline, logging who holds it. While held, a thread renews the
lease every ``ttl_s / 3`` seconds (``Lease.LeaseKeepAlive``). If the holder dies the renewals stop
and etcd deletes the key when the lease expires, so a dead holder blocks the others for at most
``ttl_s`` (kured's stuck-lock problem cannot happen). Release revokes the lease, which deletes
the key.

The key is the same on every member (default ``/herd/etcd/membership-lock``); the value is JSON
``{"holder": name, "pid": ..., "since": epoch}`` for people reading it with etcdctl.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType

from herd_agent.errors import ExitCode, HerdError
from herd_agent.etcd.client import EtcdClient, EtcdError

log = logging.getLogger(__name__)


class LockTimeout(HerdError):
    """The lock was not acquired within the wait time (someone else held it throughout)."""

    exit_code = ExitCode.TIMEOUT


class LockLost(HerdError):
    """The lock's lease expired while we believed we held it (renewals failed)."""

    exit_code = ExitCode.TEMP_FAIL


class MembershipLock:
    """A held-or-not lock on ``key``; use as a context manager.

    Args:
        client: client of the cluster the lock lives in.
        key: lock key.
        holder: name written into the key (our member name).
        ttl_s: lease TTL in seconds (>= 2).
        wait_s: longest wait to acquire, seconds.
        clock: monotonic clock (tests).
    """

    def __init__(self, client: EtcdClient, key: str, holder: str, *, ttl_s: int = 15, wait_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_s = max(2, int(ttl_s))
        self.wait_s = wait_s
        self._clock = clock
        self.lease_id = 0
        self.create_revision = 0
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """True between a successful acquire and release, while renewals succeed."""
        return bool(self.lease_id) and not self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LockLost` when the lease has expired; call before each guarded step."""
        if self.lease_id and self._lost.is_set():
            raise LockLost(f"membership lock {self.key} was lost (lease expired); stopping this change")

    def acquire(self) -> MembershipLock:
        """Block until the lock is ours.

        Raises:
            LockTimeout: not acquired within ``wait_s``.
            EtcdError: the cluster did not answer.
        """
        deadline = self._clock() + self.wait_s
        value = json.dumps({"holder": self.holder, "pid": os.getpid(), "since": time.time()})
        lease_id, _ = self.client.lease_grant(self.ttl_s)
        delay = 0.05
        last_holder = None
        try:
            while True:
                # Renew while waiting, so the lease is fresh when we win.
                if self.client.lease_keepalive(lease_id) <= 0:
                    lease_id, _ = self.client.lease_grant(self.ttl_s)
                created, current, revision = self.client.put_if_absent(self.key, value, lease_id)
                if created:
                    break
                who = _holder_of(current)
                if who != last_holder:
                    log.info("etcd membership lock %s is held by %s; waiting", self.key, who)
                    last_holder = who
                if self._clock() >= deadline:
                    raise LockTimeout(f"membership lock {self.key} still held by {who} after {self.wait_s:.0f}s")
                time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 1.0)
        except BaseException:
            self._revoke(lease_id)
            raise
        self.lease_id = lease_id
        got = self.client.get(self.key)
        self.create_revision = got[1] if got else revision
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(target=self._renew, name=f"etcd-lock-{self.holder}", daemon=True)
        self._thread.start()
        log.info("acquired etcd membership lock %s (lease %x, ttl %ds)", self.key, lease_id, self.ttl_s)
        return self

    def _renew(self) -> None:
        interval = self.ttl_s / 3.0
        while not self._stop.wait(interval):
            try:
                ttl = self.client.lease_keepalive(self.lease_id)
            except EtcdError as exc:
                log.warning("renewing the etcd membership lock failed: %s", exc)
                continue
            if ttl <= 0:
                log.error("etcd membership lock %s expired", self.key)
                self._lost.set()
                return

    def _revoke(self, lease_id: int) -> None:
        try:
            self.client.lease_revoke(lease_id)
        except EtcdError as exc:
            log.warning("could not revoke lock lease %x (it expires by itself): %s", lease_id, exc)

    def release(self) -> None:
        """Stop renewing and revoke the lease (deleting the key); safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.lease_id:
            self._revoke(self.lease_id)
            log.info("released etcd membership lock %s", self.key)
        self.lease_id = 0

    def __enter__(self) -> MembershipLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder_of(value: bytes) -> str:
    try:
        return str(json.loads(value.decode("utf-8")).get("holder", "?"))
    except (ValueError, AttributeError):
        return "?"
