"""Benchmark: the resident watcher and the leave it runs.

In the local region (moto-backed AWS with lifecycle hooks, one IMDS per instance, the emulated
Kubernetes API at time factor 0.01, the k3s stand-in, real etcd), one control plane and
``--runs`` workers join; each worker runs the real ``herd-agent watch`` at the default 1 s poll.

- ``idle_rss_mib``: resident set size (MiB) of the first worker's watcher after ``--idle-s``
  seconds of idling (psutil ``memory_info().rss``);
- ``idle_cpu_pct``: CPU time the watcher used over that idle window, as a percentage of one core;
- ``detect_latency_ms``: from the Auto Scaling call that puts the worker into
  ``Terminating:Wait`` (IMDS's target lifecycle state flips to ``Terminated`` at that moment) to the
  Node's cordon landing in the API server (observed in the emulator's store); p50 and p95 over
  the workers;
- ``leave_overhead_s``: the leave sequence's duration (journal ``finished_at - started_at``) for a
  worker with 20 pods whose ``terminationGracePeriodSeconds`` is 0, so the sequence time minus
  the pods' grace periods is the whole duration; PDB waves wait for replacements elsewhere;
- ``detect_latency_cp_down_ms``: at the end, the control plane's k3s stops (its API port stops
  answering); once the last worker's watcher has noticed (its hosts refresh, every 30 s by
  default, is then inside the discovery retry loop), a spot notice is published on that worker's
  IMDS; the figure is the time until the watcher logs it. The refresh runs on its own thread, so
  this stays about one poll interval (issue 12: it was the whole retry loop).

Prints one JSON document. Usage: ``.venv/bin/python bench/watcher.py [--runs 5] [--idle-s 30]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def workload(kube: Any, node: str, n: int) -> None:
    """20 pods on ``node``: a Deployment of 12 under a PDB (minAvailable 10), 8 unprotected, grace 0."""
    def dep(name: str, replicas: int) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"terminationGracePeriodSeconds": 0,
                                               "containers": [{"name": "m", "image": "m"}]}}}}
    kube.seed(dep(f"web{n}", 12), dep(f"batch{n}", 8),
              {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": f"web{n}", "namespace": "default"},
               "spec": {"minAvailable": 10, "selector": {"matchLabels": {"app": f"web{n}"}}}})
    kube.wait_for(lambda: len([p for p in kube.list("Pod") if p["spec"].get("nodeName") == node
                               and p["status"].get("phase") == "Running"]) == 20, timeout=60)


def wait_log(path: Path, text: str, timeout: float) -> None:
    """Wait until another process's log file holds ``text``."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit(f"no {text!r} in {path} after {timeout:g}s")
        time.sleep(0.05)  # polling another process's log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle-s", type=float, default=30.0)
    args = ap.parse_args()

    import psutil

    from herd_sandbox.aws.region import Hook, Region
    from herd_sandbox.instance import SandboxInstance
    from herd_sandbox.kube.sandbox import KubeSandbox

    etcd = REPO / ".toolchain" / "bin" / "etcd"
    base = Path(tempfile.mkdtemp(prefix="herd-bench-watch-"))
    instances: list[SandboxInstance] = []
    procs: list[Any] = []
    detect_ms, overhead = [], []
    with Region(time_factor=0.01) as region, KubeSandbox(time_factor=0.01) as kube:
        region.create_launch_template("bench-lt")

        def group(role: str, size: int) -> list[SandboxInstance]:
            region.create_group(f"bench-{role}", "bench-lt", desired=size, max_size=size,
                                hooks=[Hook("launch", "launching"), Hook("terminate", "terminating",
                                                                         default_result="CONTINUE")],
                                tags={"herd:cluster": "bench", "herd:role": role})
            out = []
            for iid in region.group_instances(f"bench-{role}"):
                inst = SandboxInstance(iid, base / iid, {**region.env(iid),
                                                         "HERD_SANDBOX_KUBECONFIG": str(kube.admin_kubeconfig),
                                                         "HERD_SANDBOX_ETCD": str(etcd)}).prepare()
                config = "discovery:\n  backoff_max_s: 1\netcd:\n  mode: external\n  insecure_plain_http: true\n"
                if role == "node":
                    shutil.copy(kube.admin_kubeconfig, inst.root.path("/etc/herd-agent/kubeconfig"))
                    config += "kube:\n  kubeconfig: /etc/herd-agent/kubeconfig\n"
                inst.write_config(config)
                out.append(inst)
            instances.extend(out)
            return out

        try:
            (cp,) = group("control-plane", 1)
            if cp.agent("join").returncode != 0:
                raise SystemExit("control plane join failed")
            kube.modify("Node", cp.instance_id, lambda n: n["spec"].update(unschedulable=True))
            workers = group("node", args.runs + 1)
            for w in workers:
                if w.agent("join").returncode != 0:
                    raise SystemExit(f"join failed on {w.instance_id}")
            watchers = {w.instance_id: w.spawn_agent("watch", log_name="watch.log") for w in workers}
            procs.extend(watchers.values())
            first = workers[0]
            wait_log(first.workdir / "watch.log", "watching for termination", 60)
            proc = psutil.Process(watchers[first.instance_id].pid)
            time.sleep(5)  # settle after start-up before the idle window
            cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            time.sleep(args.idle_s)  # the idle window being measured
            cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
            rss_mib = proc.memory_info().rss / 2**20
            idle_cpu_pct = (cpu1 - cpu0) / (t1 - t0) * 100
            idle_calls = len(region.calls(caller=first.instance_id, since=time.time() - (t1 - t0)))

            # The last worker stays to take the pods; the others leave one by one, 20 pods each.
            spare = workers[-1]
            for n, w in enumerate(workers[:-1]):
                for other in workers:  # only this worker takes the 20 pods
                    kube.modify("Node", other.instance_id,
                                lambda node, o=other, w=w: node["spec"].update(unschedulable=o is not w))
                workload(kube, w.instance_id, n)
                kube.modify("Node", spare.instance_id, lambda node: node["spec"].update(unschedulable=False))
                started = time.monotonic()
                region.terminate_instance(w.instance_id, decrement=True)
                kube.wait_for(lambda w=w: (kube.find("Node", w.instance_id) or {}).get("spec", {}).get(
                    "unschedulable"), timeout=30)
                detect_ms.append((time.monotonic() - started) * 1000)
                region.wait_for(lambda w=w: region.lifecycle_state(w.instance_id) == "Terminated", timeout=120)
                leave = region.wait_for(lambda w=w: (j := json.loads(w.root.read_text(
                    "/var/lib/herd-agent/leave.json", default="{}"))).get("finished_at") and j, timeout=30)
                overhead.append(leave["finished_at"] - leave["started_at"])
                for deployment in (f"web{n}", f"batch{n}"):
                    kube.delete("Deployment", deployment, namespace="default")

            # Detection while the hosts refresh is stuck in discovery (the control plane is down).
            cp.systemctl("stop", "k3s.service")
            spare_log = spare.workdir / "watch.log"
            wait_log(spare_log, "stopped answering", 90)
            started = time.monotonic()
            region.inject_spot_interruption(spare.instance_id)
            wait_log(spare_log, "spot interruption notice", 60)
            cp_down_ms = (time.monotonic() - started) * 1000
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            for inst in instances:
                inst.stop_units()
    print(json.dumps({
        "poll_interval_s": 1.0, "idle_window_s": args.idle_s, "runs": len(detect_ms),
        "idle_rss_mib": rss_mib, "idle_cpu_pct": idle_cpu_pct, "idle_aws_calls": idle_calls,
        "detect_latency_ms": spread(detect_ms),
        "detect_latency_ms_p50": percentile(detect_ms, 0.5), "detect_latency_ms_p95": percentile(detect_ms, 0.95),
        "leave_overhead_s": spread(overhead),
        "detect_latency_cp_down_ms": cp_down_ms,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
