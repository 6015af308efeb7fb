"""Benchmark the local AWS region: cold start, warm restart, group launch, hook completion, IMDS.

Run: ``.venv/bin/python bench/aws_region.py [--runs N] [--instances N] [--text]`` (prints JSON).

Cold start is measured in a fresh interpreter per run (imports of moto, werkzeug and flask
included) from ``import`` to a listening endpoint; that is the figure the 3 s target refers to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COLD = """
import time
t0 = time.perf_counter()
from herd_sandbox.aws import Region
region = Region().start()
t1 = time.perf_counter()
region.stop()
print(t1 - t0)
"""


def cold_start(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, check=True)  # noqa: S603
        out.append(float(proc.stdout.strip().splitlines()[-1]))
    return out


def warm(runs: int, instances: int) -> dict[str, list[float]]:
    import requests

    from herd_sandbox.aws import Hook, Region

    res: dict[str, list[float]] = {"restart": [], "launch_group": [], "complete_hooks": [], "imds_token_get": []}
    with Region():  # pay the imports once
        pass
    for _ in range(runs):
        t = time.perf_counter()
        region = Region(time_factor=0.01).start()
        res["restart"].append(time.perf_counter() - t)
        try:
            region.create_launch_template("bench-lt")
            t = time.perf_counter()
            region.create_group("bench", "bench-lt", desired=instances, hooks=[Hook("launch", "launching")])
            res["launch_group"].append(time.perf_counter() - t)
            asg = region.client("autoscaling")
            ids = region.group_instances("bench")
            t = time.perf_counter()
            for iid in ids:
                asg.complete_lifecycle_action(
                    AutoScalingGroupName="bench",
                    LifecycleHookName="launch",
                    InstanceId=iid,
                    LifecycleActionResult="CONTINUE",
                )
            res["complete_hooks"].append((time.perf_counter() - t) / len(ids))
            url = region.instance(ids[0]).imds_url
            http = requests.Session()
            t = time.perf_counter()
            for _ in range(20):
                token = http.put(url + "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
                http.get(url + "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token.text})
            res["imds_token_get"].append((time.perf_counter() - t) / 20)
        finally:
            region.stop()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--text", action="store_true", help="a human-readable table instead of JSON")
    args = parser.parse_args()
    results = {"cold_start": cold_start(args.runs), **warm(args.runs, args.instances)}
    summary = {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": len(v)}
        for k, v in results.items()
    }
    if not args.text:
        print(json.dumps(summary, indent=2))
        return
    labels = {
        "cold_start": "cold start (fresh interpreter, imports included)",
        "restart": "start in a warm process",
        "launch_group": f"CreateAutoScalingGroup of {args.instances} with a launch hook",
        "complete_hooks": "CompleteLifecycleAction, per instance",
        "imds_token_get": "IMDS token PUT + GET, per pair",
    }
    for key, s in summary.items():
        print(
            f"{labels[key]:<60} median {s['median_s'] * 1000:8.1f} ms  (min {s['min_s'] * 1000:.1f}, "
            f"max {s['max_s'] * 1000:.1f}, n={s['runs']})"
        )


if __name__ == "__main__":
    main()
