"""Is a deployed release ready for what needs it? Read from its manifest (``helm get manifest``)
and the live objects. The rules, from the Kubernetes API reference and kstatus:

- CustomResourceDefinition: condition ``Established`` is ``True`` (the API serves it);
- Deployment: ``observedGeneration >= generation``, ``updatedReplicas`` and ``availableReplicas``
  reach ``spec.replicas`` (default 1), and condition ``Available`` is not ``False``;
- StatefulSet: ``observedGeneration >= generation``, ``readyReplicas`` and ``updatedReplicas``
  reach ``spec.replicas``;
- DaemonSet: ``observedGeneration >= generation``, ``numberAvailable`` and
  ``updatedNumberScheduled`` reach ``desiredNumberScheduled``;
- APIService: condition ``Available`` is ``True``;
- Validating/MutatingWebhookConfiguration: each webhook's ``clientConfig.service`` has an
  Endpoints object with at least one ready address (a webhook without a backend fails every
  request it intercepts, so what needs it must wait).

Objects of other kinds are ready once they exist. CRDs in a chart's ``crds/`` directory are not in
the manifest (helm installs them before the templates and never upgrades them); a chart whose
dependants need its CRDs should ship them in ``templates/`` or as their own release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

Obj = dict[str, Any]
Lookup = Callable[[str, str, str | None, str], Obj | None]  # (apiVersion, kind, namespace, name) -> obj


def _cond(obj: Obj, kind: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


def _generation_seen(obj: Obj) -> bool:
    return int((obj.get("status") or {}).get("observedGeneration") or 0) >= int(obj["metadata"].get("generation") or 0)


def object_ready(obj: Obj, lookup: Lookup) -> tuple[bool, str]:
    """``(ready, why-not)`` for one live object (see the module docstring for the rules)."""
    kind = obj.get("kind", "")
    st = obj.get("status") or {}
    spec = obj.get("spec") or {}
    name = f"{kind} {obj['metadata'].get('namespace', '') + '/' if obj['metadata'].get('namespace') else ''}" \
           f"{obj['metadata']['name']}"
    if kind == "CustomResourceDefinition":
        return (_cond(obj, "Established") == "True", f"{name} not Established")
    if kind == "APIService":
        return (_cond(obj, "Available") == "True", f"{name} not Available")
    if kind == "Deployment":
        want = spec.get("replicas", 1)
        ok = (_generation_seen(obj) and st.get("updatedReplicas", 0) >= want
              and st.get("availableReplicas", 0) >= want and _cond(obj, "Available") != "False")
        return ok, f"{name}: {st.get('availableReplicas', 0)}/{want} available"
    if kind == "StatefulSet":
        want = spec.get("replicas", 1)
        ok = _generation_seen(obj) and st.get("readyReplicas", 0) >= want and st.get("updatedReplicas", want) >= want
        return ok, f"{name}: {st.get('readyReplicas', 0)}/{want} ready"
    if kind == "DaemonSet":
        want = st.get("desiredNumberScheduled", 0)
        ok = _generation_seen(obj) and st.get("numberAvailable", 0) >= want and \
            st.get("updatedNumberScheduled", 0) >= want
        return ok, f"{name}: {st.get('numberAvailable', 0)}/{want} available"
    if kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        for hook in obj.get("webhooks") or []:
            svc = (hook.get("clientConfig") or {}).get("service")
            if not svc:
                continue
            ep = lookup("v1", "Endpoints", svc.get("namespace"), svc.get("name"))
            addresses = [a for s in (ep or {}).get("subsets") or [] for a in s.get("addresses") or []]
            if not addresses:
                return False, f"{name}: webhook {hook.get('name')} has no ready endpoint in Service " \
                              f"{svc.get('namespace')}/{svc.get('name')}"
        return True, ""
    return True, ""


def manifest_objects(text: str) -> list[Obj]:
    """The objects of a ``helm get manifest`` text (``---``-separated YAML; empty parts skipped)."""
    return [d for d in yaml.safe_load_all(text or "") if isinstance(d, dict) and d.get("kind")]


def release_ready(manifest: str, lookup: Lookup, default_namespace: str) -> tuple[bool, list[str]]:
    """``(ready, reasons)`` for every object of a release's manifest, read live through ``lookup``."""
    reasons = []
    for m in manifest_objects(manifest):
        meta = m.get("metadata") or {}
        ns = meta.get("namespace") or (default_namespace if _namespaced(m["kind"]) else None)
        live = lookup(m.get("apiVersion", ""), m["kind"], ns, meta.get("name", ""))
        if live is None:
            reasons.append(f"{m['kind']} {meta.get('name')} does not exist")
            continue
        ok, why = object_ready(live, lookup)
        if not ok:
            reasons.append(why)
    return not reasons, reasons


_CLUSTER_KINDS = {"CustomResourceDefinition", "APIService", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration", "Namespace", "ClusterRole", "ClusterRoleBinding",
                  "PriorityClass", "StorageClass", "IngressClass", "PersistentVolume"}
_CHECKED = {
    "CustomResourceDefinition": ("lightkube.resources.apiextensions_v1", "CustomResourceDefinition"),
    "APIService": ("lightkube.resources.apiregistration_v1", "APIService"),
    "Deployment": ("lightkube.resources.apps_v1", "Deployment"),
    "StatefulSet": ("lightkube.resources.apps_v1", "StatefulSet"),
    "DaemonSet": ("lightkube.resources.apps_v1", "DaemonSet"),
    "ValidatingWebhookConfiguration": ("lightkube.resources.admissionregistration_v1",
                                       "ValidatingWebhookConfiguration"),
    "MutatingWebhookConfiguration": ("lightkube.resources.admissionregistration_v1", "MutatingWebhookConfiguration"),
    "Endpoints": ("lightkube.resources.core_v1", "Endpoints"),
}


def _namespaced(kind: str) -> bool:
    return kind not in _CLUSTER_KINDS


def kube_lookup(kube: Any) -> Lookup:
    """A :data:`Lookup` over a lightkube client. Kinds without a readiness rule are reported as
    existing without a read (their presence is helm's own result)."""
    import importlib

    def lookup(api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        if kind not in _CHECKED:
            return {"kind": kind, "metadata": {"name": name, "namespace": namespace}}
        module, attr = _CHECKED[kind]
        res = getattr(importlib.import_module(module), attr)
        try:
            obj = kube.get(res, name, namespace=namespace) if _namespaced(kind) else kube.get(res, name)
        except Exception as exc:
            if getattr(getattr(exc, "status", None), "code", None) == 404:
                return None
            raise
        d = obj.to_dict()
        d["kind"] = kind
        return d

    return lookup
