"""Benchmark: 50 workers join at once against a running control plane, with 10 % of EC2 calls throttled.

In the local region (``herd-sandbox run``'s machinery: moto-backed AWS with lifecycle
hooks, one IMDS per instance, the emulated Kubernetes API, the k3s stand-in, real etcd): one
control plane founds the cluster; then ``region.throttle("ec2", rate=0.1)`` makes one EC2 call in
ten answer ``RequestLimitExceeded`` (seeded), and the worker group's desired capacity goes from 0
to ``--nodes`` in one SetDesiredCapacity. Every launched instance boots at once and runs the
real ``herd-agent join``, configured with ``join.launch_hook_name`` (no DescribeLifecycleHooks)
and finding the control plane either by EC2 tags (``tags``: one DescribeInstances, throttled like
any EC2 call) or at a fixed address (``addresses``: ``discovery.addresses``, no EC2 call).

Per discovery mode (keys ``tags`` and ``addresses``):

- ``scaleout_s``: wall-clock seconds from SetDesiredCapacity until every worker is
  ``InService`` with a Ready Node (launch hooks completed by the agents).
- ``aws_calls_per_node``: AWS calls per worker that were answered (first attempts and retries
  that got through), from the region's call log (each instance signs with its own key).
- ``aws_retries_per_node``: calls per worker that were throttled (each one retried by botocore's
  standard retry mode), reported separately.
- ``ec2_calls_per_node``: EC2 calls per worker, answered.

Each run uses a fresh region. Prints one JSON document; each figure as ``{"median", "min",
"max", "stdev", "n"}``, plus the raw runs.
Usage: ``.venv/bin/python bench/scaleout.py [--runs 3] [--nodes 50] [--throttle 0.1]
[--discovery tags|addresses|both]``.
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


def one_run(n: int, nodes: int, throttle: float, discovery: str) -> dict[str, object]:
    from herd_sandbox.scenario.cluster import CONTROL_PLANE, LAUNCH_HOOK, WORKER, ScenarioCluster
    from herd_sandbox.scenario.scenarios import Context, settled
    from herd_sandbox.scenario.timeline import Timeline
    from herd_sandbox.scenario.tools import Tools

    state = Path(tempfile.mkdtemp(prefix=f"herd-bench-scaleout-{n}-"))
    cluster = ScenarioCluster(state, Timeline(log_file=state / "timeline.log"), Tools.find(),
                              name=f"so{os.getpid() % 10000}r{n}", watch=False, throttle_seed=1000 + n)
    try:
        cluster.start()
        ctx = Context(cluster)
        ctx.expected = {CONTROL_PLANE: 1, WORKER: 0}
        cluster.create_groups(1, 0)
        ctx.wait(lambda: settled(ctx), 120, "control plane joined")
        extra = f"join:\n  launch_hook_name: {LAUNCH_HOOK}\n"
        if discovery == "addresses":
            extra += f"discovery:\n  addresses: [{cluster.running(CONTROL_PLANE)[0].ip}]\n"
        cluster.extra_config[WORKER] = extra
        cluster.region.throttle("ec2", rate=throttle)
        ctx.expected[WORKER] = nodes
        started = time.monotonic()
        since = time.time()
        cluster.region.scale(cluster.groups[WORKER], nodes)
        ctx.wait(lambda: settled(ctx), 900, f"{nodes} workers joined", interval=0.2)
        seconds = time.monotonic() - started
        cluster.region.clear_throttles()
        workers = {m.instance_id for m in cluster.machines.values() if m.role == WORKER}
        calls = [c for c in cluster.region.calls(since=since) if c.caller in workers]
        answered = [c for c in calls if c.outcome != "throttled"]
        throttled = [c for c in calls if c.outcome == "throttled"]
        actions: dict[str, int] = {}
        for c in answered:
            actions[f"{c.service}:{c.action}"] = actions.get(f"{c.service}:{c.action}", 0) + 1
        failed = [c for c in answered if c.outcome != "ok"]
        result = {"discovery": discovery, "seconds": seconds, "nodes": len(workers), "calls": len(answered),
                  "throttled": len(throttled),
                  "errors": len(failed), "calls_per_node": len(answered) / len(workers),
                  "retries_per_node": len(throttled) / len(workers),
                  "ec2_calls_per_node": sum(1 for c in answered if c.service == "ec2") / len(workers),
                  "actions": actions,
                  "join_s": sorted(round(m.join_s or 0, 2) for m in cluster.machines.values() if m.role == WORKER)}
        print(f"scaleout run {n} ({discovery}): {len(workers)} workers in {seconds:.1f} s, {len(answered)} calls, "
              f"{len(throttled)} throttled", file=sys.stderr)
        return result
    finally:
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--throttle", type=float, default=0.1, help="share of EC2 calls throttled")
    ap.add_argument("--discovery", choices=("tags", "addresses", "both"), default="both",
                    help="workers find the control plane by EC2 tags, by a fixed address, or run both")
    args = ap.parse_args()
    modes = ("tags", "addresses") if args.discovery == "both" else (args.discovery,)
    doc: dict[str, object] = {"runs": args.runs, "nodes": args.nodes, "throttle": args.throttle,
                              "cpus": os.cpu_count(), "raw": []}
    for mode in modes:
        runs = [one_run(n, args.nodes, args.throttle, mode) for n in range(args.runs)]
        doc["raw"] += runs  # type: ignore[operator]
        doc[mode] = {
            "scaleout_s": spread([float(r["seconds"]) for r in runs]),  # type: ignore[arg-type]
            "aws_calls_per_node": spread([float(r["calls_per_node"]) for r in runs]),  # type: ignore[arg-type]
            "aws_retries_per_node": spread([float(r["retries_per_node"]) for r in runs]),  # type: ignore[arg-type]
            "ec2_calls_per_node": spread([float(r["ec2_calls_per_node"]) for r in runs]),  # type: ignore[arg-type]
        }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
