"""The benchmark harness: ``.venv/bin/python -m bench [--only NAME ...] [--quick]``.

Runs each benchmark script in ``bench/`` in a fresh interpreter, reads the JSON it prints, and
writes ``bench/results.json`` (every figure with its spread, method and goal) and the table in
``docs/benchmarks.md``. A figure whose script has not run keeps its last recorded value, marked
with the date it was measured; a figure no script measures yet is listed as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"
DOC = REPO / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Figure:
    """One reported number: where it comes from, its unit, its goal and how it is measured."""

    name: str
    script: str | None  # bench/<script>.py, or None when nothing measures it yet
    path: tuple[str, ...]  # keys into the script's JSON; a {"median",...} dict or a number
    unit: str
    goal: str
    method: str
    lower_is_better: bool = True
    goal_value: float | None = None


FIGURES = [
    Figure("idle_rss_mib", "watcher", ("idle_rss_mib",), "MiB", "≤ 25",
           "RSS (psutil) of a worker's real `herd-agent watch` process after 5 s of settling and a 30 s idle "
           "window at the default 1 s poll, in the sandbox (its IMDS emulator on loopback).", goal_value=25),
    Figure("idle_cpu_pct", "watcher", ("idle_cpu_pct",), "% of a core", "≤ 0.2",
           "CPU seconds (user+system) of that watcher over the 30 s idle window, as % of one core. The sandbox "
           "IMDS (werkzeug) closes every connection, so each poll reconnects; real IMDS keeps connections alive.",
           goal_value=0.2),
    Figure("detect_latency_ms_p50", "watcher", ("detect_latency_ms_p50",), "ms", "—",
           "From the Auto Scaling call that puts a worker into Terminating:Wait (its IMDS target state flips to "
           "Terminated) to the Node's cordon landing in the API server; includes the poll interval (1 s), the "
           "DescribeAutoScalingInstances confirmation and the first imports of boto3 and lightkube."),
    Figure("detect_latency_ms_p95", "watcher", ("detect_latency_ms_p95",), "ms", "—",
           "As detect_latency_ms_p50, 95th percentile over the workers."),
    Figure("detect_latency_cp_down_ms", "watcher", ("detect_latency_cp_down_ms",), "ms", "≤ 2000",
           "A spot notice published while the watcher's hosts refresh is inside the discovery retry loop "
           "(the control plane's k3s stopped), to the watcher logging it; 1 s poll. Issue 12: the refresh "
           "used to run on the poll thread, so this was the whole retry loop.", goal_value=2000),
    Figure("leave_overhead_s", "watcher", ("leave_overhead_s",), "s", "≤ 2",
           "Leave sequence duration (journal finished_at - started_at) of a worker with 20 pods whose "
           "terminationGracePeriodSeconds is 0 (so minus the grace periods is the whole duration): cordon, "
           "drain with a PDB (minAvailable 10 of 12), Node deletion, k3s stop, hook completion.", goal_value=2),
    Figure("join_overhead_s", "join", ("join_overhead_s",), "s (CPU)", "—",
           "CPU seconds (user+system, getrusage at exit) of the `herd-agent join` process of a worker in the "
           "sandbox: the agent's own work, imports included; waits on IMDS, AWS, the probe, k3s and the Node "
           "use no CPU and are excluded, as is the stand-ins' work."),
    Figure("join_wall_s", "join", ("join_wall_s",), "s", "—",
           "Wall-clock seconds of the same worker join, every wait included (sandbox: k3s stand-in)."),
    Figure("rejoin_wall_s", "join", ("rejoin_wall_s",), "s", "< 2",
           "Wall-clock seconds of a second `herd-agent join` on a joined worker (no AWS call, no file written).",
           goal_value=2),
    Figure("aws_calls_per_worker_join", "join", ("aws_calls_per_worker_join",), "calls", "≤ 4",
           "AWS API calls a worker's join made, from the sandbox region's call log.", goal_value=4),
    Figure("etcd_join_s", "etcd_membership", ("etcd_join_s",), "s", "—",
           "Learner add to voter on real etcd 3.5 (start and catch-up included), joining a 3-member cluster, "
           "over TLS with client certificates (the external-mode default)."),
    Figure("etcd_leave_s", "etcd_membership", ("etcd_leave_s",), "s", "—",
           "Quorum proof to removal confirmed by another member, real etcd 3.5, over TLS."),
    Figure("aws_region_start_s", "aws_region", ("cold_start",), "s", "< 3",
           "Sandbox AWS region start in a fresh interpreter, imports included.", goal_value=3),
    Figure("kube_list_1000_pods_field_selector_ms", "kube_api", ("median_ms",), "ms", "< 200",
           "1,000 pods over 10 nodes, list with fieldSelector spec.nodeName over HTTPS, median of 30.",
           goal_value=200),
    Figure("aws_calls_per_node_hour_idle", "idle_calls", ("aws_calls_per_node_hour_idle",), "calls", "0",
           "AWS calls per node-hour of idle joined nodes (3 control planes with external etcd over TLS + 2 "
           "workers, each running the real `herd-agent watch`: IMDS poll every 0.5 s, /etc/hosts probe every "
           "5 s, metrics every 60 s, etcd gc every 30 s), counted in the sandbox region's call log (every "
           "instance signs with its own key) over 150 s windows — longer than every periodic pass — that start "
           "after each control plane's first etcd pass, scaled to an hour.",
           goal_value=0),
    Figure("aws_calls_per_node_hour_idle_control_plane", "idle_calls",
           ("aws_calls_per_node_hour_idle_control_plane",), "calls", "0",
           "The same windows, control planes only (their periodic etcd gc asks EC2 only on evidence: a "
           "member that does not answer or is unknown). Outside the windows, each control plane's first etcd "
           "pass after its watcher starts confirms the members once: DescribeInstances (by id, by IP) and "
           "DescribeAutoScalingInstances (the script prints them as first_pass_calls).", goal_value=0),
    Figure("aws_calls_per_node_hour_idle_worker", "idle_calls", ("aws_calls_per_node_hour_idle_worker",), "calls",
           "0", "The same windows, workers only.", goal_value=0),
    Figure("scaleout_50_nodes_s", "scaleout", ("tags", "scaleout_s"), "s", "—",
           "Wall-clock seconds from one SetDesiredCapacity 0 → 50 on the worker group, against a running control "
           "plane, with 10 % of EC2 calls throttled (seeded), until all 50 are InService with a Ready Node; every "
           "instance boots at once and runs the real `herd-agent join` (join.launch_hook_name set; control plane "
           "found by EC2 tags). Sandbox: ~150 Python processes — agents, systemctl and k3s stand-ins — start on "
           "2 cores, which dominates this figure."),
    Figure("scaleout_aws_calls_per_node", "scaleout", ("tags", "aws_calls_per_node"), "calls", "≤ 2",
           "AWS calls per worker in that scale-out that were answered (throttled attempts excluded), from the "
           "region's call log: DescribeInstances (tag discovery), GetParameter (token), CompleteLifecycleAction. "
           "Three: tag discovery costs the one call over the goal.", goal_value=2),
    Figure("scaleout_aws_retries_per_node", "scaleout", ("tags", "aws_retries_per_node"), "calls", "—",
           "Throttled calls per worker in the same scale-out (each retried by botocore's standard mode), "
           "reported apart from the calls above."),
    Figure("scaleout_aws_calls_per_node_fixed_addresses", "scaleout", ("addresses", "aws_calls_per_node"), "calls",
           "≤ 2", "As `scaleout_aws_calls_per_node`, with the control plane given as discovery.addresses (no EC2 "
           "call): GetParameter and CompleteLifecycleAction.", goal_value=2),
    Figure("scaleout_50_nodes_fixed_addresses_s", "scaleout", ("addresses", "scaleout_s"), "s", "—",
           "As `scaleout_50_nodes_s`, with the control plane given as discovery.addresses."),
    Figure("leader_failover_s", "leader", ("leader_failover_s",), "s", "≤ 17 (LeaseDuration + RetryPeriod)",
           "Two real `herd-agent leader` processes on the emulated API (default Lease timings 15/10/2 s, helm 4); "
           "the leader's process group is killed -9 after it applied a release; seconds from the kill to the other "
           "process's first successful non-Lease write, from the API server's request log.", goal_value=17),
    Figure("releases_bootstrap_ratio", "leader", ("releases_bootstrap_ratio",), "ratio", "< 1.0",
           "The five test charts (CRD ← operator ← app, two independent) applied by the leader's DAG applier "
           "(parallelism 4, readiness checks included, helm through its fencing proxy) over the same charts "
           "applied by a plain `helm upgrade "
           "--install --wait` loop in needs order; helm 4, each on a fresh emulated API, same run.", goal_value=1.0),
    Figure("ship_deb_size_mib", "ship", ("deb_size_mib",), "MiB", "—",
           "`herd-agent_<version>_<arch>.deb` (xz) as `packaging/build-deb` makes it, in the bake test "
           "(`tests/ship/test_bake.py`)."),
    Figure("ship_installed_size_mib", "ship", ("installed_size_mib",), "MiB", "—",
           "dpkg's `Installed-Size` of the package in a fresh Debian 12 root (the venv is most of it)."),
    Figure("ship_boot_to_joined_s", "ship", ("boot_to_joined_s",), "s", "—",
           "From starting `systemd-nspawn --boot` of the installed root (a worker of a sandbox cluster, real "
           "systemd as PID 1) to its launch lifecycle action completed (InService): systemd's boot, the join's "
           "config phase, the k3s stand-in's start, the ready phase. Each run bakes a fresh root."),
    Figure("ship_poweroff_with_leave_s", "ship", ("poweroff_with_leave_s",), "s", "—",
           "`systemctl poweroff` in that container until it stopped, the watcher's leave (cordon, drain of an "
           "empty node, Node deletion, hook completion) included."),
    *[Figure(f"ship_exposure_{unit.removesuffix('.service').replace('-', '_')}", "ship", ("exposure", unit),
             "exposure", "held (tests/units)",
             f"`systemd-analyze security --offline=yes` of the installed `{unit}` (units/README.md); the ceiling "
             "each unit is held to is in tests/units/test_units.py.")
      for unit in ("herd-agent-join.service", "herd-agent-join-ready.service", "herd-agent.service",
                   "herd-agent-leader.service", "herd-etcd.service")],
]

SCRIPT_ARGS = {"watcher": ["--runs", "5", "--idle-s", "30"],
               "join": ["--runs", "5"], "etcd_membership": ["--runs", "5"], "aws_region": ["--runs", "5"],
               "idle_calls": ["--runs", "3", "--window", "150"], "scaleout": ["--runs", "3", "--nodes", "50"],
               "leader": ["--runs", "3"], "ship": ["--runs", "2"]}
QUICK_ARGS = {"watcher": ["--runs", "2", "--idle-s", "10"],
              "join": ["--runs", "2"], "etcd_membership": ["--runs", "2"], "aws_region": ["--runs", "2"],
              "idle_calls": ["--quick"], "scaleout": ["--runs", "1", "--nodes", "10"],
              "leader": ["--runs", "1"], "ship": ["--runs", "1"]}


def run_script(name: str, quick: bool) -> dict[str, Any]:
    args = (QUICK_ARGS if quick else SCRIPT_ARGS).get(name, [])
    print(f"bench: running bench/{name}.py {' '.join(args)}", file=sys.stderr)
    r = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args],  # noqa: S603
                       capture_output=True, text=True, timeout=1800, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"bench/{name}.py failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout))


def extract(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    value: Any = doc
    for key in path:
        value = value[key]
    if isinstance(value, dict):
        suffix = "_s" if "median_s" in value else ""
        return {"median": value[f"median{suffix}"], "min": value.get(f"min{suffix}"),
                "max": value.get(f"max{suffix}"), "stdev": value.get("stdev"), "n": value.get("n", value.get("runs"))}
    return {"median": value, "min": None, "max": None, "stdev": None, "n": doc.get("rounds")}


def verdict(fig: Figure, median: float | None) -> str:
    if median is None:
        return "not measured yet"
    if fig.goal_value is None:
        return "no goal"
    ok = median <= fig.goal_value if fig.lower_is_better else median >= fig.goal_value
    return "meets goal" if ok else "misses goal"


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by `python -m bench`; edit bench/__main__.py for methods and goals. -->",
        "",
        "Figures are medians of repeated runs with their spread (min–max), measured on this project's",
        f"machine kind (2 cores). Last run: {results.get('updated', '—')} on {results.get('machine', '—')}.",
        "Re-run: `.venv/bin/python -m bench` (all) or `--only join` (one script).",
        "",
        "| figure | median | spread (min–max) | n | unit | goal | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fig in FIGURES:
        r = results["figures"].get(fig.name, {})
        median = r.get("median")
        spread = f"{fmt(r.get('min'))}–{fmt(r.get('max'))}" if r.get("min") is not None else "—"
        lines.append(f"| `{fig.name}` | {fmt(median)} | {spread} | {r.get('n') or '—'} | {fig.unit} | "
                     f"{fig.goal} | {verdict(fig, median)} |")
    lines += ["", "## How each figure is measured", ""]
    for fig in FIGURES:
        where = f"`bench/{fig.script}.py`" if fig.script else "no script yet"
        measured = results["figures"].get(fig.name, {}).get("measured")
        when = f" Measured {measured}." if measured else ""
        lines.append(f"- **`{fig.name}`** ({where}): {fig.method}{when}")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="run only this script (repeatable)")
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke check, not a result)")
    ap.add_argument("--render-only", action="store_true", help="rewrite docs/benchmarks.md from results.json")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"figures": {}}
    if not args.render_only:
        scripts = sorted({f.script for f in FIGURES if f.script})
        if args.only:
            scripts = [s for s in scripts if s in args.only]
        today = datetime.date.today().isoformat()
        for script in scripts:
            doc = run_script(script, args.quick)
            for fig in FIGURES:
                if fig.script == script:
                    results["figures"][fig.name] = {**extract(doc, fig.path), "unit": fig.unit, "goal": fig.goal,
                                                    "method": fig.method, "measured": today,
                                                    "quick": bool(args.quick)}
        results["updated"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        results["machine"] = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    for fig in FIGURES:
        results["figures"].setdefault(fig.name, {"median": None, "unit": fig.unit, "goal": fig.goal,
                                                 "method": fig.method, "measured": None})
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    DOC.write_text(render(results))
    print(f"bench: wrote {RESULTS.relative_to(REPO)} and {DOC.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
