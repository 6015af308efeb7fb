"""Run one scenario end to end: bring-up, steps, checks, teardown, report.

Output: the timeline as it happens (unless ``--json``), then the checks table and the state
directory; with ``json_out`` one JSON document instead. The run's exit code is 0 when every step
ran and every check passed, 1 otherwise, 130 when interrupted (SIGINT/SIGTERM). Every process the
run started is stopped before it returns, whatever happened.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from herd_sandbox.scenario import checks as checks_mod
from herd_sandbox.scenario.cluster import ScenarioCluster
from herd_sandbox.scenario.scenarios import Context, Scenario, StepFailed
from herd_sandbox.scenario.timeline import Timeline
from herd_sandbox.scenario.tools import Tools

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def default_state_dir(scenario: str) -> Path:
    """``$XDG_STATE_HOME/herd-agent/sandbox-runs/<scenario>-<UTC time>-<pid>`` (``~/.local/state`` by default)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return base / "herd-agent" / "sandbox-runs" / f"{scenario}-{stamp}-{os.getpid()}"


@dataclass
class RunResult:
    """What a run found.

    Attributes:
        scenario: its name; ``short`` whether the shortened variant ran.
        exit_code: 0 ok, 1 a step or a check failed, 130 interrupted.
        checks: the verdicts (empty when interrupted before them).
        failed_step: title and reason of the step that failed, or None.
        state_dir: where the logs are.
        seconds: wall-clock duration of the whole run.
        timeline: the timeline entries as dicts.
        machines: per instance label: id, role, ip, join exit code and seconds, founder, log paths.
    """

    scenario: str
    short: bool
    exit_code: int
    checks: list[checks_mod.Check]
    failed_step: str | None
    state_dir: Path
    seconds: float
    timeline: list[dict[str, Any]] = field(default_factory=list)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every step ran and every check passed."""
        return self.exit_code == EXIT_OK

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {"scenario": self.scenario, "short": self.short, "ok": self.ok, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 1), "state_dir": str(self.state_dir),
                "failed_step": self.failed_step, "checks": [c.to_json() for c in self.checks],
                "machines": self.machines, "timeline": self.timeline}


def checks_table(results: list[checks_mod.Check]) -> str:
    """The checks as an aligned text table (``check  result  detail``)."""
    width = max([len(c.name) for c in results] + [5])
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  {'-' * 40}"]
    for c in results:
        lines.append(f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL':<6}  {c.detail}")
    return "\n".join(lines)


class _Interrupt:
    """SIGINT/SIGTERM → KeyboardInterrupt in the main thread, once; the abort event wakes waits."""

    def __init__(self, abort: threading.Event) -> None:
        self.abort = abort
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.abort.is_set():
            return  # already tearing down: let it finish
        self.abort.set()
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_scenario(scenario: Scenario, *, state_dir: Path | None = None, out: TextIO | None = sys.stdout,
                 tools: Tools | None = None, watch: bool = True) -> RunResult:
    """Run ``scenario`` and return its result (never raises for a failed step or check).

    Args:
        scenario: what to run.
        state_dir: where to keep everything (created; default :func:`default_state_dir`).
        out: where the live timeline goes (None: nowhere; ``timeline.log`` gets it anyway).
        tools: etcd and kubectl (default: found by :meth:`Tools.find`).
        watch: start ``herd-agent watch`` on joined instances (steps that remove instances need it).

    Raises:
        ToolMissing: etcd or kubectl cannot be found.
    """
    tools = tools or Tools.find()
    state_dir = Path(state_dir or default_state_dir(scenario.name)).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "timeline.log").unlink(missing_ok=True)
    timeline = Timeline(out=out, log_file=state_dir / "timeline.log")
    cluster = ScenarioCluster(state_dir, timeline, tools, etcd_mode=scenario.etcd_mode,
                              name=f"sbx{os.getpid() % 100000}", watch=watch, stack=scenario.stack)
    ctx = Context(cluster)
    started = time.monotonic()
    failed_step: str | None = None
    results: list[checks_mod.Check] = []
    interrupted = False
    before_teardown: list[str] = []
    variant = " (short)" if scenario.short else ""
    with _Interrupt(ctx.abort):
        try:
            try:
                timeline.step(f"scenario {scenario.name}{variant}: {scenario.summary}; state in {state_dir}")
                cluster.start()
                for step in scenario.steps:
                    timeline.step(step.title)
                    try:
                        step.run(ctx)
                    except StepFailed as exc:
                        failed_step = f"{step.title}: {exc}"
                        timeline.error(f"step failed: {exc}")
                        break
                timeline.step("checks")
                results = [check(cluster) for check in (
                    checks_mod.etcd_members, checks_mod.nodes_match, checks_mod.lifecycle_actions, checks_mod.pdbs,
                    checks_mod.hosts_valid, checks_mod.joins, checks_mod.leaves, *scenario.extra_checks)]
                before_teardown = checks_mod.expected_processes(cluster)
            except KeyboardInterrupt:
                interrupted = True
                timeline.error("interrupted: stopping every process of the run")
            except Exception as exc:  # noqa: BLE001 - a broken run still tears down and reports
                failed_step = f"the run itself: {exc!r}"
                timeline.error(f"run failed: {exc!r}")
            finally:
                timeline.step("teardown")
                cluster.stop()
        except KeyboardInterrupt:  # a second signal during teardown: finish tearing down anyway
            interrupted = True
            cluster.stop()
    left = cluster.processes()
    for proc in left:  # a safety net: report them, then make sure they are gone
        try:
            os.kill(proc["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if not interrupted:
        results.append(checks_mod.processes(before_teardown, left))
    for c in results:
        timeline.add("check", f"{'PASS' if c.ok else 'FAIL'} {c.name}: {c.detail}", kind="check" if c.ok else "error")
    if interrupted:
        code = EXIT_INTERRUPTED
    else:
        code = EXIT_OK if failed_step is None and all(c.ok for c in results) else EXIT_FAILED
    machines = {m.label: {"instance_id": m.instance_id, "role": m.role, "ip": m.ip, "join_rc": m.join_rc,
                          "join_s": None if m.join_s is None else round(m.join_s, 2), "founder": m.founder,
                          "powered_off_at": m.off_at, "leftovers": m.leftovers, "dir": str(m.inst.workdir)}
                for m in cluster.machines.values()}
    result = RunResult(scenario.name, scenario.short, code, results, failed_step, state_dir,
                       time.monotonic() - started, timeline.to_json(), machines)
    (state_dir / "result.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return result


def render_summary(result: RunResult) -> str:
    """The human summary printed after the timeline: the checks table, verdict and state dir."""
    lines = ["", checks_table(result.checks) if result.checks else "(no checks ran)", ""]
    if result.failed_step:
        lines.append(f"step failed: {result.failed_step}")
    verdict = {EXIT_OK: "PASSED", EXIT_FAILED: "FAILED", EXIT_INTERRUPTED: "INTERRUPTED"}[result.exit_code]
    variant = " (short)" if result.short else ""
    lines.append(f"scenario {result.scenario}{variant} {verdict} in {result.seconds:.1f} s")
    lines.append(f"state directory (every instance's logs, timeline.log, result.json): {result.state_dir}")
    return "\n".join(lines)
