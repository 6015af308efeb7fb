"""Benchmark: AWS calls idle nodes make, per node-hour, for workers and control planes separately
(goal 0: the steady state polls IMDS and the local etcd only).

In the local region (``herd-sandbox run``'s machinery: moto-backed AWS with lifecycle hooks, one
IMDS per instance, the emulated Kubernetes API, the k3s stand-in, real etcd over TLS):
``--control-planes`` control planes (external etcd) and ``--workers`` workers join through the
real ``herd-agent join``, then each runs the real ``herd-agent watch`` with the sandbox config
(IMDS poll every 0.5 s, /etc/hosts probe every 5 s) and ``etcd.gc_interval_s: --gc-interval``
(default 30 s, the schema's minimum; production default 300 s), so every periodic pass of the
watcher (hosts 5 s, metrics 60 s, etcd gc ``--gc-interval``) runs several times inside each
window. Windows are ``--window`` seconds (default 150 s: longer than every periodic pass) and
start only after ``--settle`` seconds (default ``2 × gc interval``), i.e. after each control
plane's first etcd pass, which asks EC2 and Auto Scaling once to confirm the members it has
never seen (``first_pass_calls`` reports those). Each window counts the calls the region's call
log attributes to the instances (every instance signs with its own key), per role, scaled to one
node-hour.

Prints one JSON document: ``aws_calls_per_node_hour_idle`` (all nodes), ``…_control_plane`` and
``…_worker`` as ``{"median", "min", "max", "stdev", "n"}``, the raw windows and the settle calls.
Usage: ``.venv/bin/python bench/idle_calls.py [--runs 3] [--window 150] [--workers 2] [--control-planes 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measurement windows")
    ap.add_argument("--window", type=float, default=150.0, help="seconds per window (> every periodic pass)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--control-planes", type=int, default=3)
    ap.add_argument("--gc-interval", type=int, default=30, help="etcd.gc_interval_s of the control planes")
    ap.add_argument("--settle", type=float, default=None, help="seconds after the watchers start (2 × gc interval)")
    ap.add_argument("--quick", action="store_true", help="one 70 s window")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.window = 1, 70.0
    settle = 2 * args.gc_interval if args.settle is None else args.settle
    if args.window <= max(60, args.gc_interval, 5):
        raise SystemExit("--window must be longer than every periodic pass (metrics 60 s, hosts 5 s, etcd gc)")

    from herd_sandbox.scenario.cluster import CONTROL_PLANE, WORKER, ScenarioCluster
    from herd_sandbox.scenario.scenarios import Context, settled
    from herd_sandbox.scenario.timeline import Timeline
    from herd_sandbox.scenario.tools import Tools

    state = Path(tempfile.mkdtemp(prefix="herd-bench-idle-"))
    gc_config = f"etcd:\n  gc_interval_s: {args.gc_interval}\n"
    cluster = ScenarioCluster(state, Timeline(log_file=state / "timeline.log"), Tools.find(),
                              name=f"idle{os.getpid() % 10000}", extra_config={CONTROL_PLANE: gc_config})
    windows: list[dict] = []
    try:
        cluster.start()
        ctx = Context(cluster)
        ctx.expected = {CONTROL_PLANE: args.control_planes, WORKER: args.workers}
        cluster.create_groups(args.control_planes, args.workers)
        ctx.wait(lambda: settled(ctx), 600, "cluster joined")
        machines = cluster.running()
        roles = {m.instance_id: m.role for m in machines}
        ctx.wait(lambda: all("watching for termination" in m.tail("watch.log", 50) for m in machines), 120,
                 "every watcher polling")
        settle_from = time.time()
        ctx.wait(lambda: time.time() - settle_from >= settle, settle + 10, "the first etcd passes")
        first = [c for c in cluster.region.calls(since=settle_from) if c.caller in roles]
        for _ in range(args.runs):
            since = time.time()
            ctx.wait(lambda s=since: time.time() - s >= args.window, args.window + 10, "a measurement window")
            calls = [c for c in cluster.region.calls(since=since) if c.caller in roles]
            row: dict = {"seconds": args.window, "calls": len(calls)}
            for role, key in ((CONTROL_PLANE, "control_plane"), (WORKER, "worker")):
                ids = [i for i, r in roles.items() if r == role]
                mine = [c for c in calls if roles[c.caller] == role]
                row[key] = {"nodes": len(ids), "calls": len(mine),
                            "per_node_hour": len(mine) / max(len(ids), 1) / args.window * 3600,
                            "actions": sorted({f"{c.service}:{c.action}" for c in mine})}
            row["per_node_hour"] = len(calls) / len(roles) / args.window * 3600
            windows.append(row)
            print(f"idle: {len(calls)} AWS calls from {len(roles)} nodes in {args.window:.0f} s", file=sys.stderr)
        alive = all(m.watch is not None and m.watch.poll() is None for m in machines)
        if not alive:
            raise SystemExit("a watcher exited during the measurement")
    finally:
        cluster.stop()
    print(json.dumps({
        "runs": args.runs, "window_s": args.window, "gc_interval_s": args.gc_interval, "settle_s": settle,
        "control_planes": args.control_planes, "workers": args.workers, "cpus": os.cpu_count(),
        "first_pass_calls": sorted(f"{roles[c.caller]}:{c.service}:{c.action}" for c in first),
        "windows": windows,
        "aws_calls_per_node_hour_idle": spread([w["per_node_hour"] for w in windows]),
        "aws_calls_per_node_hour_idle_control_plane": spread([w["control_plane"]["per_node_hour"] for w in windows]),
        "aws_calls_per_node_hour_idle_worker": spread([w["worker"]["per_node_hour"] for w in windows]),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
