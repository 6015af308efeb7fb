"""``herd-agent plan leave``: what a leave would do now, computed from the live API, changing nothing.

For each pod on the Node: its disposition (as the drain would classify it), the
PodDisruptionBudget that covers it and that budget's headroom (``status.disruptionsAllowed``).
Pods whose budget has no headroom are reported as blocking (they wait for replacements elsewhere
to turn Ready, or for the budget to be spent). The expected duration is an estimate: evictions go
in waves of each budget's headroom (at least 1), each wave taking the longest grace period in it
(Kubernetes default 30 s), plus the fixed steps (``leave.reserve_s`` is the allowance).
"""

from __future__ import annotations

import math
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.drain.classify import Disposition, classify, grace_period, key


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        k, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = k in labels
        if (op == "In" and labels.get(k) not in values) or (op == "NotIn" and present and labels[k] in values) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def plan(pods: list[dict[str, Any]], pdbs: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """The plan as data (pure): ``{"pods": [...], "budgets": {...}, "blocking": [...], "expected_s": float}``."""
    rows, waves, budgets = [], {}, {}
    for pdb in pdbs:
        meta = pdb["metadata"]
        budgets[f"{meta.get('namespace')}/{meta['name']}"] = {
            "allowed": int((pdb.get("status") or {}).get("disruptionsAllowed", 0)),
            "healthy": (pdb.get("status") or {}).get("currentHealthy"),
            "desired": (pdb.get("status") or {}).get("desiredHealthy"),
        }
    blocking = []
    for pod in pods:
        verdict = classify(pod, delete_emptydir_data=cfg.get("leave.delete_emptydir_data"),
                           evict_unmanaged=cfg.get("leave.evict_unmanaged"))
        ns = pod["metadata"].get("namespace", "default")
        labels = pod["metadata"].get("labels") or {}
        covering = [f"{ns}/{p['metadata']['name']}" for p in pdbs
                    if p["metadata"].get("namespace") == ns and _matches((p.get("spec") or {}).get("selector"), labels)]
        row = {"pod": key(pod), "action": verdict.disposition.value, "reason": verdict.reason,
               "pdb": covering[0] if covering else None, "grace_s": grace_period(pod)}
        rows.append(row)
        if verdict.disposition == Disposition.EVICT:
            group = covering[0] if covering else f"(no budget) {key(pod)}"
            waves.setdefault(group, []).append(row["grace_s"])
            if covering and budgets[covering[0]]["allowed"] == 0:
                blocking.append(f"{key(pod)}: PodDisruptionBudget {covering[0]} allows no disruption now")
        elif verdict.disposition in (Disposition.BLOCK_EMPTYDIR, Disposition.BLOCK_UNMANAGED):
            blocking.append(f"{key(pod)}: {verdict.reason}")
    expected = 0.0
    for group, graces in waves.items():
        allowed = budgets.get(group, {}).get("allowed", len(graces)) if not group.startswith("(") else len(graces)
        expected = max(expected, math.ceil(len(graces) / max(1, allowed)) * max(graces))
    return {"pods": rows, "budgets": budgets, "blocking": blocking,
            "expected_s": expected + float(cfg.get("leave.reserve_s"))}


def plan_text(kube: Any, node: str, cfg: Config, *, control_plane: bool,
              steps: list[tuple[str, str]] | None = None) -> str:
    """Read the Node's pods and the budgets through ``kube`` (lightkube) and render the plan.

    Args:
        steps: ``(step, what it would do)`` from :meth:`LeaveSequence.plan` (the one list of steps).
    """
    from lightkube.resources.core_v1 import Pod
    from lightkube.resources.policy_v1 import PodDisruptionBudget

    pods = [p.to_dict() for p in kube.list(Pod, namespace="*", fields={"spec.nodeName": node})]
    pdbs = [p.to_dict() for p in kube.list(PodDisruptionBudget, namespace="*")]
    result = plan(pods, pdbs, cfg)
    out = [f"leave plan for Node {node} ({'control plane' if control_plane else 'worker'}):", "", "pods:"]
    for row in sorted(result["pods"], key=lambda r: r["pod"]):
        extra = f" [{row['pdb']}]" if row["pdb"] else ""
        why = f" — {row['reason']}" if row["reason"] else ""
        out.append(f"  {row['action']:<18} {row['pod']}{extra} (grace {row['grace_s']}s){why}")
    out += ["", "disruption budgets:"]
    for name, b in sorted(result["budgets"].items()):
        out.append(f"  {name}: {b['allowed']} disruption(s) allowed now "
                   f"({b['healthy']} healthy, {b['desired']} needed)")
    out += ["", "would block:"] + ([f"  {b}" for b in result["blocking"]] or ["  nothing"])
    out += ["", "steps:"] + [f"  {name:<14} {what}" for name, what in steps or []]
    out += ["", f"expected duration: about {result['expected_s']:.0f}s"]
    return "\n".join(out) + "\n"
