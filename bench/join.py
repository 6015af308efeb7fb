"""Benchmark: what a worker join costs — the agent's own time, and its AWS calls.

In the local region (moto-backed AWS with lifecycle hooks, one IMDS per instance, the emulated
Kubernetes API, the k3s stand-in, real etcd): one control plane founds the cluster, then
``--runs`` workers join one after another through the real ``herd-agent join`` process.

- ``join_overhead_s``: CPU seconds (user + system) of the ``herd-agent join`` process itself —
  its own work, imports included. Time spent waiting on remote parties (IMDS, AWS APIs, the
  control-plane probe, k3s starting, the Node turning Ready) uses no CPU of the agent and so is
  excluded; so is the work of the processes it starts (the systemctl and k3s stand-ins).
  Measured with ``getrusage(RUSAGE_SELF)`` at the process's exit.
- ``join_wall_s``: wall-clock seconds of the same join (includes every wait).
- ``aws_calls_per_worker_join``: AWS API calls the worker made, from the region's call log
  (goal ≤ 4).
- ``rejoin_wall_s``: wall-clock seconds of a second ``herd-agent join`` on a joined worker
  (goal < 2 s; it must make no AWS call and rewrite no file).

Prints one JSON document; each figure as ``{"median", "min", "max", "stdev", "n"}``.
Usage: ``.venv/bin/python bench/join.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def agent_with_rusage(out: str, args: list[str]) -> None:
    """Run the agent CLI in this process; write its own rusage to ``out`` at exit."""
    import atexit

    def dump() -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        Path(out).write_text(json.dumps({"cpu_s": ru.ru_utime + ru.ru_stime}))

    atexit.register(dump)
    from herd_agent.cli import main

    main(args)


def timed_join(inst, rusage_file: Path) -> tuple[float, float]:
    started = time.monotonic()
    r = subprocess.run([sys.executable, __file__, "--agent-rusage", str(rusage_file), "--", "join"],  # noqa: S603
                       env=inst.env(), capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    if r.returncode != 0:
        raise SystemExit(f"join failed on {inst.instance_id}: {r.stderr[-2000:]}")
    return json.loads(rusage_file.read_text())["cpu_s"], wall


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--agent-rusage":
        agent_with_rusage(sys.argv[2], sys.argv[4:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from herd_sandbox.aws.region import Hook, Region
    from herd_sandbox.instance import SandboxInstance
    from herd_sandbox.kube.sandbox import KubeSandbox

    etcd = REPO / ".toolchain" / "bin" / "etcd"
    base = Path(tempfile.mkdtemp(prefix="herd-bench-join-"))
    overhead, wall, calls, rejoin = [], [], [], []
    instances = []
    with Region(time_factor=0.01) as region, KubeSandbox(time_factor=0.01) as kube:
        region.create_launch_template("bench-lt")

        def group(role: str, size: int) -> list[SandboxInstance]:
            region.create_group(f"bench-{role}", "bench-lt", desired=size, max_size=size,
                                hooks=[Hook("launch", "launching")],
                                tags={"herd:cluster": "bench", "herd:role": role})
            out = []
            for iid in region.group_instances(f"bench-{role}"):
                inst = SandboxInstance(iid, base / iid, {**region.env(iid),
                                                         "HERD_SANDBOX_KUBECONFIG": str(kube.admin_kubeconfig),
                                                         "HERD_SANDBOX_ETCD": str(etcd)}).prepare()
                inst.write_config("discovery:\n  backoff_max_s: 1\n"
                                  "etcd:\n  mode: external\n  insecure_plain_http: true\n")
                out.append(inst)
            instances.extend(out)
            return out

        try:
            (cp,) = group("control-plane", 1)
            timed_join(cp, base / "cp.rusage")
            for n, w in enumerate(group("node", args.runs)):
                cpu, seconds = timed_join(w, base / f"w{n}.rusage")
                overhead.append(cpu)
                wall.append(seconds)
                calls.append(float(len(region.calls(caller=w.instance_id))))
                before = len(region.calls(caller=w.instance_id))
                _, again = timed_join(w, base / f"w{n}.again.rusage")
                rejoin.append(again)
                if len(region.calls(caller=w.instance_id)) != before:
                    raise SystemExit("a re-run made AWS calls")
        finally:
            for inst in instances:
                inst.stop_units()
    print(json.dumps({
        "runs": args.runs, "cpus": os.cpu_count(),
        "join_overhead_s": spread(overhead), "join_wall_s": spread(wall),
        "aws_calls_per_worker_join": spread(calls), "rejoin_wall_s": spread(rejoin),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
