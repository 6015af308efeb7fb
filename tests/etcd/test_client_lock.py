"""The gateway client and the membership lock against a real one-member etcd."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from herd_agent.etcd.client import EtcdClient, member_id_hex
from herd_agent.etcd.errors import EtcdUnreachable, LearnerNotInSync, MemberNotFound, TooManyLearners
from herd_agent.etcd.lock import LockLost, LockTimeout, MembershipLock
from tests.etcd.harness import free_port, wait_for

pytestmark = pytest.mark.allow_subprocess


@pytest.fixture
def one(lab):
    inst = lab.found()
    return inst, EtcdClient([inst.client_url], tls=lab.tls(), retry_s=5)


def test_prefix_ids_and_etcdctl_agree(one, toolchain):
    inst, client = one
    assert client.prefix(inst.client_url) == "/v3"
    cluster_id, [m] = client.member_list()
    assert cluster_id and m.name == inst.name and m.started and not m.is_learner
    tls = client.tls
    out = subprocess.run([str(toolchain.etcdctl), "--endpoints", inst.client_url, "--cacert", tls.ca, "--cert",
                          tls.cert, "--key", tls.key, "member", "list"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split(",")[0] == member_id_hex(m.id)  # etcdctl prints the decimal JSON ID in hex


def test_typed_errors(one, lab):
    _, client = one
    with pytest.raises(MemberNotFound):
        client.member_remove(12345, retry_s=0)
    learner, members = client.member_add([lab.settings.peer_url(lab.next_ip())], learner=True)
    assert learner.is_learner and not learner.started and len(members) == 2
    started = time.monotonic()
    with pytest.raises(TooManyLearners):
        client.member_add([lab.settings.peer_url(lab.next_ip())], learner=True, retry_s=0.5)
    with pytest.raises(LearnerNotInSync):  # never started, so never in sync; retried, then raised
        client.member_promote(learner.id, retry_s=0.5)
    assert time.monotonic() - started < 30  # the retries are bounded (0.5 s each; room for a slow machine)


def test_kv_is_base64_and_create_only_once(one):
    _, client = one
    key, value = b"/herd/\x00bin", b"\xff\x00value"
    created, _, rev = client.put_if_absent(key, value)
    assert created and rev > 0
    created, current, create_rev = client.put_if_absent(key, b"other")
    assert not created and current == value and create_rev == rev
    assert client.get(key)[0] == value
    assert client.delete_if_created_at(key, create_rev)
    assert client.get(key) is None


def test_failover_to_an_answering_endpoint(one):
    inst, live = one
    dead = f"http://127.0.0.1:{free_port()}"
    client = EtcdClient([dead, inst.client_url], tls=live.tls, timeout_s=1, retry_s=0)
    assert client.member_list()[1]
    assert client.endpoints[0] == inst.client_url
    with pytest.raises(EtcdUnreachable):
        EtcdClient([dead], timeout_s=1, retry_s=0).member_list()


def test_lock_excludes_and_hands_over(one):
    _, client = one
    first = MembershipLock(client, "/lock", "first", ttl_s=5).acquire()
    with pytest.raises(LockTimeout, match="held by first"):
        MembershipLock(client, "/lock", "second", ttl_s=5, wait_s=0.3).acquire()
    got: list[str] = []
    second = MembershipLock(client, "/lock", "second", ttl_s=5, wait_s=10)
    t = threading.Thread(target=lambda: got.append(second.acquire().holder))
    t.start()
    first.release()
    t.join(timeout=15)
    assert got == ["second"]
    second.release()
    assert client.get("/lock") is None


def test_lock_is_kept_alive_while_held(one):
    _, client = one
    lock = MembershipLock(client, "/lock", "holder", ttl_s=5).acquire()
    until = time.monotonic() + 12  # two and a half TTLs (a renewal every TTL/3: stalls of 3 s pass)
    wait_for(lambda: client.get("/lock") is None or time.monotonic() > until, timeout=20, what="hold time")
    assert client.get("/lock") is not None and lock.held
    lock.release()


def test_lock_of_a_dead_holder_expires(one):
    _, client = one
    dead = MembershipLock(client, "/lock", "dead", ttl_s=6).acquire()
    dead._stop.set()  # the holder dies: no more renewals, no release
    dead._thread.join()
    started = time.monotonic()
    heir = MembershipLock(client, "/lock", "heir", ttl_s=2, wait_s=15).acquire()
    assert time.monotonic() - started >= 1.0  # it had to wait for the lease to run out (≥ 2 s left at its start)
    assert client.lease_keepalive(dead.lease_id) == 0
    heir.release()


def test_lock_lost_when_lease_vanishes(one):
    _, client = one
    lock = MembershipLock(client, "/lock", "holder", ttl_s=2).acquire()
    client.lease_revoke(lock.lease_id)  # e.g. an operator, or a long partition
    wait_for(lambda: not lock.held, timeout=10, what="the lock to notice its lease is gone")
    with pytest.raises(LockLost):
        lock.check()
    lock.release()
