"""A seeded random run of scale-out, scale-in and kill -9 on a 3-5 member cluster.

A monitor thread samples the cluster every 50 ms for the whole run and records the quorum
margin: voters whose etcd process is running minus the quorum of the voter count (process
liveness, not HTTP answers, so a slow status under CPU load does not count as a lost vote). The
run fails if it ever drops below zero, and prints the lowest margin seen. After every operation
the cluster must be fully healthy again (every member answers, no learner). Set
HERD_ETCD_CHAOS_SEED to replay.

etcd's own guard (``--strict-reconfig-check``) is switched off here: every removal and promotion
is then protected only by the agent's quorum proofs, which is what this run tests; it also
skips etcd's fixed 5 s "connected for the health interval" wait, which keeps 30 operations fast.
The scenario tests in test_membership.py and test_gc.py keep etcd's guard on.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from herd_agent.etcd.client import EtcdClient
from herd_agent.etcd.errors import EtcdError
from herd_agent.etcd.quorum import quorum_size
from tests.etcd.harness import healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess

SEED = int(os.environ.get("HERD_ETCD_CHAOS_SEED", "20261121"))
OPERATIONS = 30


class Monitor(threading.Thread):
    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.stop = threading.Event()
        self.samples: list[tuple[int, int]] = []  # (margin, voters)

    def run(self):
        while not self.stop.wait(0.05):
            urls = [i.client_url for i in self.lab.instances if i.alive]
            try:
                client = EtcdClient(urls, tls=self.lab.tls(), timeout_s=2, retry_s=0)
                _, members = client.member_list(linearizable=False)
            except EtcdError:
                continue
            running = {i.name for i in self.lab.instances if i.systemctl().is_active(self.lab.settings.unit)}
            voters = [m for m in members if m.is_voter]
            alive = [m for m in voters if m.name in running]
            self.samples.append((len(alive) - quorum_size(len(voters)), len(voters)))


def test_seeded_random_membership_run(fast_lab):
    lab = fast_lab
    rng = random.Random(SEED)
    live = list(lab.three())
    monitor = Monitor(lab)
    monitor.start()
    log: list[str] = []
    try:
        for step in range(OPERATIONS):
            n = len(live)
            ops = (["scale_out"] if n < 5 else []) + (["scale_in"] if n > 3 else []) + (["kill"] if n > 3 else [])
            op = rng.choice(ops)
            if op == "scale_out":
                live.append(lab.join())
            elif op == "scale_in":
                victim = rng.choice(live)
                victim.membership.leave([i.client_url for i in live])
                victim.alive = False
                live.remove(victim)
            else:
                victim = rng.choice(live)
                lab.kill9(victim)
                lab.terminate(victim)
                live.remove(victim)
                sweeper = rng.choice(live)
                peers = [i.client_url for i in live]
                assert sweeper.membership.gc(peers, lab.oracle()).removed is None  # first sight: grace starts
                lab.advance(lab.settings.stale_grace_s + 1)
                removed = sweeper.membership.gc(peers, lab.oracle()).removed
                assert removed is not None and removed.member.name == victim.name
            log.append(f"{step}:{op}->{len(live)}")
            wait_for(lambda: healthy_voters_equal(lab, live), timeout=30, what=f"healthy cluster after {log[-1]}")
    finally:
        monitor.stop.set()
        monitor.join(timeout=5)
    st = lab.status()
    assert sorted(m.name for m in st.members) == sorted(i.name for i in live)
    assert not st.learners
    lowest = min(m for m, _ in monitor.samples)
    print(f"\nseed {SEED}: {len(log)} operations {' '.join(log)}; {len(monitor.samples)} samples; "
          f"lowest quorum margin seen: {lowest}")
    assert len(monitor.samples) > 100
    assert lowest >= 0
