"""PodDisruptionBudget status and the eviction subresource, as Kubernetes computes them.

Status (https://kubernetes.io/docs/concepts/workloads/pods/disruptions/ and the disruption
controller): ``currentHealthy`` counts matching pods that are Ready, not being deleted and not
recently evicted (``status.disruptedPods``); ``minAvailable`` as an integer gives
``desiredHealthy`` directly and ``expectedPods`` = the number of matching pods; a percentage
``minAvailable`` or any ``maxUnavailable`` uses ``expectedPods`` = the sum of the scales of the
pods' controllers (Deployment, ReplicaSet, StatefulSet), percentages rounded up;
``disruptionsAllowed = max(0, currentHealthy - desiredHealthy)``.

Fail-safe (the disruption controller's ``failSafe``): when ``expectedPods`` cannot be computed —
a ``maxUnavailable`` or percentage ``minAvailable`` budget over a pod with no scalable controller
(a bare pod, or one owned by a DaemonSet or Job) — the status allows no disruption
(``disruptionsAllowed: 0``, condition ``DisruptionAllowed=False`` reason ``SyncFailed``).

Eviction (https://kubernetes.io/docs/concepts/scheduling-eviction/api-eviction/ and the eviction
REST handler): pods that are terminal, Pending or already being deleted are deleted without a
budget check; more than one matching budget is a 500. Otherwise the decision reads the budget's
**stored** status, as written by the last disruption-controller pass (it can be stale): a status
whose ``observedGeneration`` lags the budget's ``generation`` answers 429 "still being processed";
a healthy pod is evicted only while ``disruptionsAllowed > 0`` (else 429 TooManyRequests with a
``DisruptionBudget`` cause), and the allowance is decremented in the stored status; an unhealthy
pod is evicted when the budget is met (``unhealthyPodEvictionPolicy`` IfHealthyBudget) or always
(AlwaysAllow).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.selectors import match_label_selector
from herd_sandbox.kube.store import Obj, Store, now_rfc3339

EVICTION_REFUSED = "Cannot evict pod as it would violate the pod's disruption budget."
MULTIPLE_PDBS = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."


def pod_ready(pod: Obj) -> bool:
    """True when the pod's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def resolve(value: int | str | None, total: int, round_up: bool) -> int:
    """An IntOrString (``2`` or ``"50%"``) against ``total``; percentages rounded up or down."""
    if value is None:
        return 0
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def _scale_of(store: Store, namespace: str, owner: dict[str, Any]) -> int | None:
    kinds = {("apps", "ReplicaSet"), ("apps", "Deployment"), ("apps", "StatefulSet"), ("", "ReplicationController")}
    group = owner.get("apiVersion", "").rpartition("/")[0]
    if (group, owner.get("kind")) not in kinds:
        return None
    rtype = store.registry.by_kind(group, owner["kind"])
    if rtype is None:
        return None
    controller = store.find(rtype, namespace, owner.get("name", ""))
    if controller is None or controller["metadata"]["uid"] != owner.get("uid"):
        return None
    if owner["kind"] == "ReplicaSet":
        for parent in controller["metadata"].get("ownerReferences") or []:
            if parent.get("controller") and parent.get("kind") == "Deployment":
                scale = _scale_of(store, namespace, parent)
                if scale is not None:
                    return scale
    return int((controller.get("spec") or {}).get("replicas", 1))


def compute_status(store: Store, pdb: Obj, pods: list[Obj]) -> dict[str, Any]:
    """The ``status`` a PodDisruptionBudget should have, given the pods of its namespace.

    Keeps ``disruptedPods`` entries for pods that still exist and are not yet being deleted,
    and the previous ``lastTransitionTime`` of the DisruptionAllowed condition when unchanged.
    """
    spec, old = pdb.get("spec") or {}, pdb.get("status") or {}
    namespace = pdb["metadata"]["namespace"]
    selector = spec.get("selector")
    matched = [p for p in pods if match_label_selector(selector, p["metadata"].get("labels"))] if selector else []
    by_name = {p["metadata"]["name"]: p for p in matched}
    disrupted = {name: when for name, when in (old.get("disruptedPods") or {}).items()
                 if name in by_name and not by_name[name]["metadata"].get("deletionTimestamp")}
    healthy = sum(1 for p in matched if pod_ready(p) and not p["metadata"].get("deletionTimestamp")
                  and p["metadata"]["name"] not in disrupted)
    min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
    if max_unavailable is None and isinstance(min_available, int):
        expected, desired = len(matched), min_available
    else:
        controllers: dict[str, int] = {}
        for pod in matched:
            owner = next((o for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")), None)
            scale = _scale_of(store, namespace, owner) if owner else None
            if scale is None:
                return _fail_safe(pdb, old, f"found no controllers for pod {pod['metadata']['name']!r}")
            controllers.setdefault(owner["uid"], scale)  # type: ignore[index]
        expected = sum(controllers.values())
        if max_unavailable is not None:
            desired = max(0, expected - resolve(max_unavailable, expected, True))
        elif min_available is not None:
            desired = resolve(min_available, expected, True)
        else:
            desired = expected
    allowed = max(0, healthy - desired)
    condition_status = "True" if allowed > 0 else "False"
    previous = next((c for c in old.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == condition_status \
        else now_rfc3339()
    status: dict[str, Any] = {
        "observedGeneration": pdb["metadata"].get("generation", 1),
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{
            "type": "DisruptionAllowed", "status": condition_status,
            "reason": "SufficientPods" if allowed > 0 else "InsufficientPods", "message": "",
            "lastTransitionTime": transition, "observedGeneration": pdb["metadata"].get("generation", 1),
        }],
    }
    if disrupted:
        status["disruptedPods"] = disrupted
    return status


def _fail_safe(pdb: Obj, old: dict[str, Any], message: str) -> dict[str, Any]:
    """The disruption controller's failSafe: the previous status with no disruption allowed."""
    previous = next((c for c in old.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == "False" else now_rfc3339()
    generation = pdb["metadata"].get("generation", 1)
    return {**old, "observedGeneration": generation, "disruptionsAllowed": 0,
            "currentHealthy": old.get("currentHealthy", 0), "desiredHealthy": old.get("desiredHealthy", 0),
            "expectedPods": old.get("expectedPods", 0),
            "conditions": [{"type": "DisruptionAllowed", "status": "False", "reason": "SyncFailed",
                            "message": message, "lastTransitionTime": transition,
                            "observedGeneration": generation}]}


def refresh_namespace(store: Store, namespace: str) -> None:
    """Recompute and store the status of every PodDisruptionBudget in ``namespace`` (writes only changes)."""
    pdb_type = store.registry.by_kind("policy", "PodDisruptionBudget")
    pod_type = store.registry.by_kind("", "Pod")
    assert pdb_type is not None and pod_type is not None
    with store.lock:
        pdbs, _ = store.list_ref(pdb_type, namespace)
        if not pdbs:
            return
        pods, _ = store.list_ref(pod_type, namespace)
        for pdb in pdbs:
            if pdb["metadata"].get("deletionTimestamp"):
                continue
            status = compute_status(store, pdb, pods)
            if status != pdb.get("status"):
                store.modify(pdb_type, namespace, pdb["metadata"]["name"],
                             lambda d, s=status: {**d, "status": s}, subresource="status")


def evict(store: Store, namespace: str, name: str, delete_options: dict[str, Any] | None) -> None:
    """Handle ``POST /api/v1/namespaces/<ns>/pods/<name>/eviction``; returns normally when the pod
    was (gracefully) deleted.

    Raises:
        ApiError: 404 when the pod is missing; 429 TooManyRequests when a budget refuses;
            500 when more than one budget matches.
    """
    pod_type = store.registry.by_kind("", "Pod")
    pdb_type = store.registry.by_kind("policy", "PodDisruptionBudget")
    assert pod_type is not None and pdb_type is not None
    options = delete_options or {}
    grace = options.get("gracePeriodSeconds")
    with store.lock:
        pod = store.get_ref(pod_type, namespace, name)
        uid_wanted = ((options.get("preconditions") or {}).get("uid"))
        phase = (pod.get("status") or {}).get("phase")
        if pod["metadata"].get("deletionTimestamp") or phase in ("Succeeded", "Failed", "Pending"):
            store.delete(pod_type, namespace, name, grace, options.get("preconditions"))
            return
        pdbs, _ = store.list_ref(pdb_type, namespace)
        matching = [p for p in pdbs if (p.get("spec") or {}).get("selector") is not None
                    and match_label_selector(p["spec"]["selector"], pod["metadata"].get("labels"))]
        if not matching:
            store.delete(pod_type, namespace, name, grace, options.get("preconditions"))
            return
        if len(matching) > 1:
            raise ApiError(500, "InternalError", MULTIPLE_PDBS, {"causes": [{"message": MULTIPLE_PDBS}]})
        pdb = matching[0]
        pdb_name = pdb["metadata"]["name"]
        status = copy.deepcopy(pdb.get("status") or {})
        if int(status.get("observedGeneration", 0)) < int(pdb["metadata"].get("generation", 1)):
            message = f"The disruption budget {pdb_name} is still being processed by the server."
            raise ApiError(429, "TooManyRequests", EVICTION_REFUSED, {"causes": [{
                "reason": "DisruptionBudget", "message": message}]})
        status.setdefault("currentHealthy", 0)
        status.setdefault("desiredHealthy", 0)
        status.setdefault("disruptionsAllowed", 0)
        if uid_wanted and uid_wanted != pod["metadata"]["uid"]:
            store.delete(pod_type, namespace, name, grace, options.get("preconditions"))  # raises 409
        if not pod_ready(pod):
            policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
            if policy == "AlwaysAllow" or (status["currentHealthy"] >= status["desiredHealthy"] > 0):
                store.delete(pod_type, namespace, name, grace, options.get("preconditions"))
                return
        if status["disruptionsAllowed"] <= 0:
            raise ApiError(429, "TooManyRequests", EVICTION_REFUSED, {"causes": [{
                "reason": "DisruptionBudget",
                "message": f"The disruption budget {pdb_name} needs {status['desiredHealthy']} healthy pods and has "
                           f"{status['currentHealthy']} currently",
            }]})
        status["disruptionsAllowed"] -= 1
        status.setdefault("disruptedPods", {})[name] = now_rfc3339()
        if status["disruptionsAllowed"] == 0 and status.get("conditions"):
            status["conditions"][0].update(status="False", reason="InsufficientPods", lastTransitionTime=now_rfc3339())
        store.modify(pdb_type, namespace, pdb["metadata"]["name"], lambda d: {**d, "status": status},
                     subresource="status")
        store.delete(pod_type, namespace, name, grace, options.get("preconditions"))
