"""The scenarios: a sequence of steps against a :class:`ScenarioCluster`, then the checks.

- ``lifecycle`` (default): found 3 control planes + 3 workers (external etcd); deploy a workload
  with a PodDisruptionBudget (real kubectl); scale the workers in by 1, then out by 2; replace
  every control plane, one at a time; spot-interrupt a worker.
- ``founding-race``: 5 control planes boot at once; one founder, one cluster.
- ``embedded``: ``lifecycle`` with k3s' embedded etcd.

Each has a shortened variant (``short=True``) with fewer instances, which the test suite runs.
``lifecycle`` and ``embedded`` also run on the groups of a CloudFormation stack (``stack=``, the
example ``ami/cloudformation/cluster.yaml``): it is deployed into the region by the found step,
and the stack variant adds the check that every instance call was decided by its stack role's
policy and none refused. The stack allows 1, 3 or 5 control planes, so its short variant founds 3.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd_sandbox.scenario import checks
from herd_sandbox.scenario.cluster import CONTROL_PLANE, WORKER, ScenarioCluster


class StepFailed(Exception):
    """A scenario step could not reach its goal; the message says what was seen instead."""


@dataclass
class Context:
    """What a step works with.

    Attributes:
        cluster: the running cluster.
        expected: the desired size of each group as the scenario set it (``{"control-plane": 3, "node": 3}``).
        abort: set when the run is interrupted; waits end early.
        state: free-form notes between steps.
    """

    cluster: ScenarioCluster
    expected: dict[str, int] = field(default_factory=lambda: {CONTROL_PLANE: 0, WORKER: 0})
    abort: threading.Event = field(default_factory=threading.Event)
    state: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str, who: str = "scenario", kind: str = "instance") -> None:
        """Add a timeline entry."""
        self.cluster.timeline.add(who, text, kind=kind)

    def wait(self, condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
        """Poll ``condition()`` until truthy (returned); it may raise :class:`StepFailed` to stop early.

        Raises:
            StepFailed: not reached within ``timeout`` seconds (with ``what`` and the last reason).
            KeyboardInterrupt: the run was aborted.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.abort.is_set():
                raise KeyboardInterrupt
            if time.monotonic() >= deadline:
                reason = self.state.get("why_not", "")
                raise StepFailed(f"{what}: not reached within {timeout:.0f} s{'; ' + reason if reason else ''}")
            self.abort.wait(interval)


@dataclass(frozen=True)
class Step:
    """One step: ``title`` for the timeline and ``run(ctx)``, which raises StepFailed on failure."""

    title: str
    run: Callable[[Context], None]


@dataclass(frozen=True)
class Scenario:
    """A named scenario.

    Attributes:
        name: ``lifecycle``, ``founding-race``, ``embedded``.
        summary: one line for ``--help`` and the report.
        etcd_mode: ``external`` or ``embedded``.
        steps: in order.
        extra_checks: scenario-specific checks after the common ones.
        short: this is the suite's shortened variant.
        stack: the CloudFormation template whose groups it runs on (None: the sandbox's own groups).
    """

    name: str
    summary: str
    etcd_mode: str
    steps: tuple[Step, ...]
    extra_checks: tuple[Callable[[ScenarioCluster], checks.Check], ...] = ()
    short: bool = False
    stack: Path | None = None


# --- waiting for the cluster to settle ---------------------------------------------------------------

def _node_ready(ctx: Context, name: str) -> bool:
    node = ctx.cluster.kube.find("Node", name)
    return bool(node) and any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in node["status"].get("conditions", []))


def settled(ctx: Context) -> bool:
    """True when both groups are at their expected size, every in-service instance joined and has
    a Ready Node, nothing is launching or terminating, and every terminated machine is powered off.

    Raises:
        StepFailed: a join failed (the group would replace the instance, but the run is not clean).
    """
    c = ctx.cluster
    for m in list(c.machines.values()):
        if m.join_rc not in (None, 0):
            raise StepFailed(f"join failed on {m.label} (exit {m.join_rc}): {m.tail('join.log', 2)}")
    reasons = []
    for role in (CONTROL_PLANE, WORKER):
        ids = c.region.group_instances(c.groups[role])
        busy = [i for i in ids if c.region.lifecycle_state(i) != "InService"]
        if busy:
            reasons.append(f"{', '.join(f'{c.label(i)} {c.region.lifecycle_state(i)}' for i in busy)}")
        if len(ids) - len(busy) != ctx.expected[role]:
            reasons.append(f"{role}: {len(ids) - len(busy)}/{ctx.expected[role]} in service")
        for i in ids:
            m = c.machines.get(i)
            if m is None or m.join_rc != 0 or not _node_ready(ctx, i):
                reasons.append(f"{c.label(i)} not joined yet")
    gone = [m.label for m in c.machines.values()
            if c.region.lifecycle_state(m.instance_id) == "Terminated" and m.off_at is None]
    if gone:
        reasons.append(f"powering off {', '.join(gone)}")
    ctx.state["why_not"] = "; ".join(reasons)
    return not reasons


def _members_line(ctx: Context) -> None:
    check = checks.etcd_members(ctx.cluster)
    ctx.say(f"etcd: {check.detail}", "etcd", kind="etcd" if check.ok else "error")


# --- steps ---------------------------------------------------------------------------------------------

def found(control_planes: int, workers: int, timeout: float = 150) -> Step:
    """Create both groups at once and wait for every instance to join."""
    def run(ctx: Context) -> None:
        started = time.monotonic()
        ctx.expected = {CONTROL_PLANE: control_planes, WORKER: workers}
        ctx.cluster.create_groups(control_planes, workers)
        ctx.wait(lambda: settled(ctx), timeout, "every instance joined")
        ctx.say(f"cluster founded: {control_planes} control planes, {workers} workers in "
                f"{time.monotonic() - started:.1f} s")
        if control_planes:
            _members_line(ctx)

    what = f"{control_planes} control planes" + (f" and {workers} workers" if workers else "") + " boot at once"
    return Step(f"found the cluster: {what}", run)


WORKLOAD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: default
spec:
  minAvailable: {min_available}
  selector:
    matchLabels: {{app: web}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-logs
  namespace: kube-system
spec:
  selector:
    matchLabels: {{app: node-logs}}
  template:
    metadata:
      labels: {{app: node-logs}}
    spec:
      tolerations:
      - operator: Exists
      containers:
      - name: fluent-bit
        image: fluent/fluent-bit:3.2
"""


def deploy_workload(replicas: int = 3, min_available: int = 2, timeout: float = 60) -> Step:
    """``kubectl apply`` a Deployment, its PodDisruptionBudget and a DaemonSet; wait until available."""
    def run(ctx: Context) -> None:
        c = ctx.cluster
        path = c.state_dir / "workload.yaml"
        path.write_text(WORKLOAD.format(replicas=replicas, min_available=min_available))
        r = c.kubectl.run("apply", "-f", str(path))
        for line in (r.stdout + r.stderr).strip().splitlines():
            ctx.say(line, "kubectl", kind="kubectl")
        if r.returncode != 0:
            raise StepFailed(f"kubectl apply failed ({r.returncode})")

        def available() -> bool:
            dep = c.kube.find("Deployment", "web", namespace="default", api_version="apps/v1")
            pdb = c.kube.find("PodDisruptionBudget", "web", namespace="default", api_version="policy/v1")
            ready = (dep or {}).get("status", {}).get("readyReplicas", 0)
            healthy = (pdb or {}).get("status", {}).get("currentHealthy", 0)
            ctx.state["why_not"] = f"web {ready}/{replicas} ready, budget {healthy}/{min_available} healthy"
            return ready == replicas and healthy >= min_available

        ctx.wait(available, timeout, "workload available")
        pods = c.kube.list("Pod", namespace="default",
                           where=lambda p: p["metadata"].get("labels", {}).get("app") == "web")
        spread = ", ".join(sorted(c.label(p["spec"].get("nodeName", "")) for p in pods))
        ctx.say(f"web: {replicas} replicas Ready on {spread}; PDB minAvailable {min_available}")

    return Step(f"deploy a workload with a PDB: {replicas} replicas, minAvailable {min_available} (kubectl apply)",
                run)


def scale_workers(delta: int, timeout: float = 120) -> Step:
    """SetDesiredCapacity on the worker group by ``delta`` and wait for the group to settle."""
    def run(ctx: Context) -> None:
        c = ctx.cluster
        started = time.monotonic()
        target = ctx.expected[WORKER] + delta
        ctx.expected[WORKER] = target
        c.region.scale(c.groups[WORKER], target)
        ctx.wait(lambda: settled(ctx), timeout, f"workers at {target}")
        ctx.say(f"workers: {target} in service after {time.monotonic() - started:.1f} s")

    word = "in" if delta < 0 else "out"
    return Step(f"scale the workers {word} by {abs(delta)}", run)


def replace_control_planes(count: int | None = None, timeout: float = 120) -> Step:
    """Terminate each original control plane in turn (no decrement: the group launches a
    replacement) and wait until the old one left and the new one joined before the next."""
    def run(ctx: Context) -> None:
        c = ctx.cluster
        victims = [m for m in c.running(CONTROL_PLANE)]
        victims = victims[:count] if count is not None else victims
        for m in victims:
            started = time.monotonic()
            ctx.say(f"TerminateInstanceInAutoScalingGroup {m.label} (replace)", "aws", kind="aws")
            c.region.terminate_instance(m.instance_id, decrement=False)
            ctx.wait(lambda: settled(ctx), timeout, f"{m.label} replaced")
            ctx.say(f"{m.label} replaced in {time.monotonic() - started:.1f} s")
            _members_line(ctx)

    what = "every control plane" if count is None else f"{count} control plane(s)"
    return Step(f"replace {what}, one at a time", run)


def spot_interrupt_worker(timeout: float = 110) -> Step:
    """A spot interruption notice on a worker. The sandbox models Auto Scaling as reacting to it
    at once: it starts terminating the instance (hooks run) and launches a replacement. EC2
    reclaims the instance at the notice's time (two minutes) whatever the hook says."""
    def run(ctx: Context) -> None:
        c = ctx.cluster
        workers = c.running(WORKER)
        if not workers:
            raise StepFailed("no running worker to interrupt")
        m = workers[0]
        started = time.monotonic()
        notice = c.region.inject_spot_interruption(m.instance_id)
        ctx.say(f"spot/instance-action on {m.label}: {notice['action']} at {notice['time']}", "aws", kind="aws")
        c.region.terminate_instance(m.instance_id, decrement=False)
        ctx.wait(lambda: settled(ctx), timeout, f"{m.label} interrupted and replaced")
        ctx.say(f"{m.label} interrupted and replaced in {time.monotonic() - started:.1f} s")

    return Step("spot-interrupt a worker", run)


def final_state(ctx: Context) -> None:
    """``kubectl get nodes`` into the timeline (the real kubectl)."""
    r = ctx.cluster.kubectl.run("get", "nodes", "-o", "wide")
    for line in (r.stdout + r.stderr).strip().splitlines():
        ctx.say(line, "kubectl", kind="kubectl")
    if r.returncode != 0:
        raise StepFailed(f"kubectl get nodes failed ({r.returncode})")


FINAL = Step("kubectl get nodes", final_state)


# --- the scenarios ------------------------------------------------------------------------------------

def lifecycle(short: bool = False, etcd_mode: str = "external", stack: Path | None = None) -> Scenario:
    """The whole lifecycle: found, workload, scale in/out, replace control planes, spot; on the
    groups of ``stack`` when given."""
    name = "lifecycle" if etcd_mode == "external" else "embedded"
    if short:
        steps = (found(3 if stack else 2, 2), deploy_workload(2, 1), scale_workers(-1), scale_workers(+1),
                 replace_control_planes(count=1), spot_interrupt_worker(), FINAL)
    else:
        steps = (found(3, 3), deploy_workload(3, 2), scale_workers(-1), scale_workers(+2),
                 replace_control_planes(), spot_interrupt_worker(), FINAL)
    mode = "k3s embedded etcd" if etcd_mode == "embedded" else "external etcd"
    on = f"; groups of the stack {stack}" if stack else ""
    return Scenario(name, f"found, workload + PDB, scale in/out, replace control planes, spot ({mode}{on})",
                    etcd_mode, steps, extra_checks=(checks.iam_enforced,) if stack else (), short=short,
                    stack=Path(stack) if stack else None)


def founding_race(short: bool = False) -> Scenario:
    """Several control planes boot at once: one founder, one cluster."""
    n = 3 if short else 5
    return Scenario("founding-race", f"{n} control planes boot at once: one founder, one cluster", "external",
                    (found(n, 0), FINAL), extra_checks=(checks.one_founder,), short=short)


STACK_SCENARIOS = {"lifecycle": "external", "embedded": "embedded"}
"""The scenarios that run on a stack's groups (``--stack``) → their etcd mode."""

SCENARIOS: dict[str, Callable[[bool], Scenario]] = {
    "lifecycle": lambda short: lifecycle(short, "external"),
    "founding-race": founding_race,
    "embedded": lambda short: lifecycle(short, "embedded"),
    "leader": lambda short: _leader_module().leader(short, 4),
    "leader-helm3": lambda short: _leader_module().leader(short, 3),
}
"""Scenario name → factory(short) → :class:`Scenario`."""


def _leader_module() -> Any:
    from herd_sandbox.scenario import leader

    return leader


def get(name: str, short: bool = False, stack: Path | None = None) -> Scenario:
    """The scenario called ``name`` (on the groups of the CloudFormation template ``stack`` when given).

    Raises:
        KeyError: an unknown name.
        ValueError: ``stack`` given for a scenario that does not run on a stack (see :data:`STACK_SCENARIOS`).
    """
    if stack is None:
        return SCENARIOS[name](short)
    if name not in STACK_SCENARIOS:
        raise ValueError(f"scenario {name} does not run on a stack; --stack works with "
                         f"{', '.join(sorted(STACK_SCENARIOS))}")
    return lifecycle(short, STACK_SCENARIOS[name], stack)
