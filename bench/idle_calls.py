"""Benchmark: AWS calls an idle node makes, per node-hour (goal 0: the steady state polls IMDS only).

In the local region (``herd-sandbox run``'s machinery: moto-backed AWS with lifecycle
hooks, one IMDS per instance, the emulated Kubernetes API, the k3s stand-in, real etcd): one
control plane and ``--workers`` workers join through the real ``herd-agent join``, then each
runs the real ``herd-agent watch`` (IMDS poll every 0.5 s, /etc/hosts probe every 5 s: the
sandbox config, twice as eager as the defaults). Once every watcher has reported its first poll,
each of ``--runs`` windows of ``--window`` seconds counts the AWS calls the region's call log
attributes to the instances (every instance signs with its own key), scaled to one node-hour.

Prints one JSON document: ``aws_calls_per_node_hour_idle`` as ``{"median", "min", "max",
"stdev", "n"}`` and the raw windows.
Usage: ``.venv/bin/python bench/idle_calls.py [--runs 3] [--window 60] [--workers 2]``.
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
    ap.add_argument("--window", type=float, default=60.0, help="seconds per window")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from herd_sandbox.scenario.cluster import CONTROL_PLANE, WORKER, ScenarioCluster
    from herd_sandbox.scenario.scenarios import Context, settled
    from herd_sandbox.scenario.timeline import Timeline
    from herd_sandbox.scenario.tools import Tools

    state = Path(tempfile.mkdtemp(prefix="herd-bench-idle-"))
    cluster = ScenarioCluster(state, Timeline(log_file=state / "timeline.log"), Tools.find(),
                              name=f"idle{os.getpid() % 10000}")
    windows: list[dict[str, float]] = []
    try:
        cluster.start()
        ctx = Context(cluster)
        ctx.expected = {CONTROL_PLANE: 1, WORKER: args.workers}
        cluster.create_groups(1, args.workers)
        ctx.wait(lambda: settled(ctx), 180, "cluster joined")
        machines = cluster.running()
        ids = {m.instance_id for m in machines}
        ctx.wait(lambda: all("watching for termination" in m.tail("watch.log", 50) for m in machines), 60,
                 "every watcher polling")
        for _ in range(args.runs):
            since = time.time()
            time.sleep(args.window)  # a measurement window: nothing to wait for but the clock
            calls = [c for c in cluster.region.calls(since=since) if c.caller in ids]
            per_node_hour = len(calls) / len(ids) / args.window * 3600
            windows.append({"seconds": args.window, "nodes": len(ids), "calls": len(calls),
                            "per_node_hour": per_node_hour,
                            "actions": sorted({f"{c.service}:{c.action}" for c in calls})})
            print(f"idle: {len(calls)} AWS calls from {len(ids)} nodes in {args.window:.0f} s", file=sys.stderr)
        alive = all(m.watch is not None and m.watch.poll() is None for m in machines)
        if not alive:
            raise SystemExit("a watcher exited during the measurement")
    finally:
        cluster.stop()
    print(json.dumps({"runs": args.runs, "window_s": args.window, "nodes": args.workers + 1,
                      "cpus": os.cpu_count(), "windows": windows,
                      "aws_calls_per_node_hour_idle": spread([w["per_node_hour"] for w in windows])}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
