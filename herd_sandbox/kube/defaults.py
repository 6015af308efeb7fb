"""Admission: the defaults and checks the real API server applies on create and update.

Only what clients observe is modelled: pod defaults (``terminationGracePeriodSeconds`` 30,
``restartPolicy``, ``schedulerName``, phase Pending), Deployment defaults (replicas,
RollingUpdate 25 %/25 %), namespace phase and ``kubernetes.io/metadata.name`` label, Secret
``stringData`` folded into ``data``, PDB zero status, Service defaults and a ClusterIP allocated
from k3s' default service CIDR 10.43.0.0/16 (API reference "Service v1"; "Virtual IPs and
Service Proxies": ``clusterIP`` is allocated on create unless ``None`` or ExternalName, and kept
on update), and CRDs (name must be
``<plural>.<group>``; on create/update they are Established at once and their resources served).
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

from herd_sandbox.kube import errors
from herd_sandbox.kube.resources import ResourceType, rows_for_crd
from herd_sandbox.kube.store import Event, Obj, Store, now_rfc3339


def _pod(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    spec = obj.setdefault("spec", {})
    if op == "CREATE":
        if not spec.get("containers"):
            raise errors.invalid("Pod", "", obj["metadata"].get("name", ""),
                                 [("FieldValueRequired", "spec.containers", "Required value")])
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        for c in spec["containers"]:
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("resources", {})
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", "BestEffort")
    elif old is not None:
        old_spec = old.get("spec") or {}
        if old_spec.get("nodeName") and spec.get("nodeName") != old_spec.get("nodeName"):
            raise errors.invalid("Pod", "", obj["metadata"]["name"], [(
                "FieldValueForbidden", "spec", "Forbidden: pod updates may not change fields other than "
                "`spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, "
                "`spec.tolerations` (only additions to existing tolerations), "
                "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")])
    return obj


def _deployment(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    if not spec.get("selector"):
        raise errors.invalid(rtype.kind, rtype.group, obj["metadata"].get("name", ""),
                             [("FieldValueRequired", "spec.selector", "Required value")])
    return obj


def _replicated(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    obj.setdefault("spec", {}).setdefault("replicas", 1)
    return obj


def _namespace(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    meta = obj["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    if not meta.get("deletionTimestamp"):
        obj.setdefault("status", {})["phase"] = "Active"
    return obj


def _secret(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    return obj


def _pdb(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    if op == "CREATE":
        obj["status"] = {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}
    return obj


def _service_admission(store: Store) -> Any:
    def admit(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        if spec["type"] == "ExternalName":
            return obj
        spec.setdefault("internalTrafficPolicy", "Cluster")
        before = (old or {}).get("spec") or {}
        if not spec.get("clusterIP") and before.get("clusterIP"):  # allocated once, kept on update
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if field in before:
                    spec[field] = copy.deepcopy(before[field])
        if not spec.get("clusterIP"):
            used = {(s.get("spec") or {}).get("clusterIP") for s in store.list_ref(rtype)[0]}
            n = int.from_bytes(hashlib.sha256(f"{obj['metadata'].get('namespace')}/{obj['metadata'].get('name')}"
                                              .encode()).digest()[:2], "big")
            while (ip := f"10.43.{(n >> 8) % 256}.{n % 254 + 1}") in used or ip == "10.43.0.1":
                n = (n + 1) % 65536
            spec["clusterIP"] = ip
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        return obj

    return admit


def _crd_admission(store: Store) -> Any:
    def admit(op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        expected = f"{names.get('plural', '')}.{spec.get('group', '')}"
        if obj["metadata"]["name"] != expected:
            raise errors.invalid(rtype.kind, rtype.group, obj["metadata"]["name"], [(
                "FieldValueInvalid", "metadata.name", f'Invalid value: "{obj["metadata"]["name"]}": must be '
                f"spec.names.plural+\".\"+spec.group")])
        if not names.get("kind") or not spec.get("versions"):
            raise errors.invalid(rtype.kind, rtype.group, obj["metadata"]["name"], [(
                "FieldValueRequired", "spec.names.kind", "Required value")])
        accepted = copy.deepcopy(names)
        accepted.setdefault("singular", names["kind"].lower())
        accepted.setdefault("listKind", f"{names['kind']}List")
        moment = now_rfc3339()
        obj["status"] = {
            "acceptedNames": accepted,
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")]
            or [spec["versions"][0]["name"]],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": moment},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": moment},
            ],
        }
        store.registry.set_crd(obj["metadata"]["name"], rows_for_crd(obj))
        return obj

    return admit


def install(store: Store) -> None:
    """Register the admission hooks on ``store`` and the CRD-removal listener."""
    store.add_admission(("", "pods"), _pod)
    store.add_admission(("apps", "deployments"), _deployment)
    for plural in ("replicasets", "statefulsets"):
        store.add_admission(("apps", plural), _replicated)
    store.add_admission(("", "namespaces"), _namespace)
    store.add_admission(("", "secrets"), _secret)
    store.add_admission(("policy", "poddisruptionbudgets"), _pdb)
    store.add_admission(("", "services"), _service_admission(store))
    store.add_admission(("apiextensions.k8s.io", "customresourcedefinitions"), _crd_admission(store))

    def on_crd_delete(event: Event) -> None:
        if event.key == ("apiextensions.k8s.io", "customresourcedefinitions") and event.type == "DELETED":
            spec = event.obj.get("spec") or {}
            plural = (spec.get("names") or {}).get("plural", "")
            store.registry.set_crd(event.obj["metadata"]["name"], [])
            store.remove_type((spec.get("group", ""), plural))

    store.add_listener(on_crd_delete)
