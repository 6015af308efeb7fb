"""Benchmark: how long an etcd join and a leave take on real etcd on loopback.

Founds a three-member cluster through the agent's real path (runner -> systemctl stand-in ->
etcd), then repeats: a fourth instance joins (learner add -> start -> promote), then leaves
(quorum proof -> remove -> confirmed by another member). Between operations it waits
``--settle-s`` so each one meets a steady cluster: etcd refuses reconfiguration until every voter
has been connected for 5 s, and that fixed wait is etcd's, not the agent's.

Prints one JSON document:

- ``etcd_join_s``: learner add to voter (includes starting etcd and catching up);
- ``etcd_promote_after_start_s``: etcd ready (systemctl start returned) to voter;
- ``etcd_leave_s``: quorum proof to removal confirmed by another member;
- ``etcd_leave_total_s``: the whole leave call including stopping etcd and rotating its data dir;

each as ``{"median", "min", "max", "stdev", "n"}`` in seconds.

Members talk TLS with client certificates (the external-mode default; the CA is kept in memory
here instead of Secrets Manager); ``--plain`` measures the ``etcd.insecure_plain_http`` opt-out.

Usage: ``.venv/bin/python bench/etcd_membership.py [--runs 5] [--fast-timers] [--plain] [--etcd PATH]``.
``--fast-timers`` uses the tests' 20 ms heartbeat / 200 ms election timeout instead of etcd's
defaults (100 ms / 1000 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from herd_agent.etcd.membership import Membership  # noqa: E402
from herd_agent.etcd.settings import EtcdSettings, Identity  # noqa: E402
from herd_agent.host.fsroot import HostRoot  # noqa: E402
from herd_sandbox.systemctl import SandboxRunner, Systemctl, write_shim  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemoryCaStore:
    """The cluster CA kept in this process (the agent keeps it in Secrets Manager)."""

    def __init__(self) -> None:
        self.pair: tuple[bytes, bytes] | None = None

    def get(self) -> tuple[bytes, bytes] | None:
        return self.pair

    def create(self, cert: bytes, key: bytes) -> bool:
        if self.pair is not None:
            return False
        self.pair = (cert, key)
        return True


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "stdev": round(statistics.pstdev(values), 4), "n": len(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--settle-s", type=float, default=5.5)
    ap.add_argument("--fast-timers", action="store_true")
    ap.add_argument("--plain", action="store_true", help="plain HTTP (the etcd.insecure_plain_http opt-out)")
    ap.add_argument("--etcd", default=str(REPO / ".toolchain" / "bin" / "etcd"))
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="herd-bench-etcd-"))
    bindir = base / "bin"
    write_shim(bindir, sys.executable)
    path = f"{bindir}:{Path(args.etcd).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    extra = {"ETCD_HEARTBEAT_INTERVAL": "20", "ETCD_ELECTION_TIMEOUT": "200"} if args.fast_timers else {}
    common = dict(client_port=free_port(), peer_port=free_port(), listen_localhost=False, extra_env=extra,
                  lock_ttl_s=5)
    settings = EtcdSettings(**common) if args.plain else EtcdSettings.external_tls(**common)  # type: ignore[arg-type]
    store = MemoryCaStore()
    net = 200 + os.getpid() % 50
    members: list[Membership] = []
    counter = iter(range(2, 250))

    def instance() -> Membership:
        n = next(counter)
        root = HostRoot(base / f"i{n}")
        m = Membership(root, settings, Identity(f"bench-{n}", f"127.0.{net}.{n}"), runner=SandboxRunner(root, path),
                       ca_store=store)
        members.append(m)
        return m

    joins, promotes, leaves, leave_totals = [], [], [], []
    try:
        seed = instance()
        seed.found()
        peers = [seed.client_url]
        for _ in range(2):
            time.sleep(args.settle_s)
            m = instance()
            m.join(peers)
            peers.append(m.client_url)
        for _ in range(args.runs):
            time.sleep(args.settle_s)
            m = instance()
            r = m.join(peers)
            joins.append(r.join_s)
            promotes.append(r.catchup_s)
            time.sleep(args.settle_s)
            started = time.monotonic()
            lr = m.leave(peers + [m.client_url])
            leave_totals.append(time.monotonic() - started)
            leaves.append(lr.leave_s)
    finally:
        for m in members:
            Systemctl(m.root, {"PATH": path}).kill(settings.unit, signal.SIGKILL, wait_s=5)
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({
        "etcd_version": subprocess.run([args.etcd, "--version"], capture_output=True, text=True,  # noqa: S603
                                       check=False).stdout.split("\n")[0].split()[-1],
        "timers": "20ms/200ms" if args.fast_timers else "etcd defaults 100ms/1000ms",
        "transport": "plain HTTP" if args.plain else "TLS with client certificates",
        "runs": args.runs, "cluster_size_before_join": 3,
        "etcd_join_s": spread(joins), "etcd_promote_after_start_s": spread(promotes),
        "etcd_leave_s": spread(leaves), "etcd_leave_total_s": spread(leave_totals),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
