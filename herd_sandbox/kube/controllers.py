"""The simulated cluster behind the API: controllers, scheduler and kubelets in one thread.

Each pass is idempotent and writes only what differs, so the loop settles:

- graceful deletions ending (pods removed once their grace period × time factor has passed, or
  sooner when annotated ``sandbox.herd.io/exits-after-seconds``); a pod on a NotReady node is not
  reaped: with its kubelet gone nothing confirms it stopped, so it stays Terminating until the node
  is Ready again or the Node object is deleted (then pod GC removes it);
- namespace termination (content removed, then the namespace) and a ``default`` ServiceAccount
  per namespace;
- garbage collection: objects whose owners (by uid) are all gone are deleted, pods bound to a
  node that no longer exists are removed (pod GC);
- Deployment → ReplicaSet (one per pod template, named ``<deployment>-<template hash>``, older
  ones scaled to 0) → pods; StatefulSet → pods ``<name>-<ordinal>``; DaemonSet → one pod per
  eligible node (``spec.nodeName`` set, the DaemonSet tolerations added as the real controller
  does);
- scheduling: unbound pods go to the Ready, schedulable node with the fewest pods whose taints
  (NoSchedule, NoExecute) they tolerate and whose labels match their ``nodeSelector``;
- kubelets: pods bound to a Ready node become Running and Ready at once; on a NotReady node
  they lose Ready;
- status of ReplicaSets, Deployments, DaemonSets, StatefulSets and PodDisruptionBudgets;
- the endpoints controller (:func:`endpoint_subsets`): a ``v1 Endpoints`` per Service with a
  selector, named like it, removed with it; and the EndpointSlice controller
  (:func:`endpoint_slices`): ``discovery.k8s.io/v1`` EndpointSlices owned by the Service;
- kube-aggregator's availability controller (:func:`apiservice_available`): the ``Available``
  condition of every APIService (no request is proxied to the Service, so the discovery check the
  real controller also makes is taken as passed);
- k3s' node controller (the API stands in for a k3s server's): when a Node is deleted, its
  ``kube-system/<node>.node-password.k3s`` Secret goes too (k3s ``pkg/node/controller.go``,
  ``onRemove``), so a node re-joins under the same name without anyone deleting Secrets.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from herd_sandbox.kube import disruption
from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.resources import ResourceType
from herd_sandbox.kube.store import Event, Obj, Store, now_rfc3339

log = logging.getLogger(__name__)

DAEMONSET_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """Whether a taint is tolerated (https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/)."""
    for tol in tolerations or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator", "Equal") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def node_ready(node: Obj) -> bool:
    """True when the Node's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def node_fits(node: Obj, pod_spec: dict[str, Any], extra_tolerations: list[dict[str, Any]] | None = None) -> bool:
    """Whether a pod with ``pod_spec`` may be placed on ``node``: nodeSelector, cordon and taints."""
    tolerations = list(pod_spec.get("tolerations") or []) + list(extra_tolerations or [])
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    spec = node.get("spec") or {}
    if spec.get("unschedulable") and not tolerates(
            tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}):
        return False
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return False
    return True


def template_hash(template: dict[str, Any]) -> str:
    """A stable 10-character hash of a pod template (the ``pod-template-hash`` label value)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owner_ref(owner: Obj) -> dict[str, Any]:
    """A controller ownerReference pointing at ``owner``."""
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def controlled_by(obj: Obj, owner: Obj) -> bool:
    """True when ``obj`` has a controller ownerReference to ``owner`` (by uid)."""
    return any(r.get("uid") == owner["metadata"]["uid"] and r.get("controller")
               for r in obj["metadata"].get("ownerReferences") or [])


def _pod_ip(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return f"10.42.{digest[0]}.{digest[1] % 254 + 1}"


class World:
    """The controllers' thread. Start with :meth:`start`, stop with :meth:`stop`.

    Args:
        store: the object store.
        tick: how often an idle loop checks for ending grace periods (a change wakes it at once).
    """

    def __init__(self, store: Store, tick: float = 0.05) -> None:
        self.store = store
        self.tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = threading.Event()
        self._paused = threading.Event()
        self._removed_nodes: list[str] = []
        self._removed_services: list[tuple[str, str]] = []
        self.passes = 0
        self.errors: list[str] = []  # failed passes (the fixtures fail a test that caused one)
        store.add_listener(self._on_event)
        t = store.registry.by_kind
        self.t: dict[str, ResourceType] = {}
        for group, kind in (("", "Pod"), ("", "Node"), ("", "Namespace"), ("", "ServiceAccount"),
                            ("apps", "Deployment"), ("apps", "ReplicaSet"), ("apps", "DaemonSet"),
                            ("apps", "StatefulSet"), ("policy", "PodDisruptionBudget"), ("", "Service"),
                            ("", "Endpoints"), ("apiregistration.k8s.io", "APIService"),
                            ("discovery.k8s.io", "EndpointSlice")):
            row = t(group, kind)
            assert row is not None
            self.t[kind] = row

    def _on_event(self, event: Event) -> None:
        if event.type == "DELETED" and event.key == ("", "nodes"):
            self._removed_nodes.append(event.obj["metadata"]["name"])
        if event.type == "DELETED" and event.key == ("", "services"):
            self._removed_services.append((event.obj["metadata"]["namespace"], event.obj["metadata"]["name"]))
        self._dirty.set()

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="kube-sandbox-world", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait for it."""
        self._stop.set()
        self._dirty.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(self.tick)
            # clear only a flag we saw set: a change arriving between the wait and here must not be lost
            woke = self._dirty.is_set()
            if woke:
                self._dirty.clear()
            if self._stop.is_set():
                break
            due = self.store.next_due()
            if not woke and (due is None or due > time.monotonic()):
                continue  # idle: no change and no grace period ending, so no pass (and no lock held)
            try:
                self.reconcile()
            except Exception as exc:  # a bug in one pass must not kill the simulated cluster
                log.exception("sandbox controllers: pass failed")
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def reconcile(self) -> None:
        """Run every pass once (under the store lock, so API calls see a consistent world)."""
        with self.store.lock:
            self.store.reap(hold=self._kubelet_gone)
            self._node_passwords()
            self._namespaces()
            self._garbage_collect()
            self._deployments()
            self._replicasets()
            self._statefulsets()
            self._daemonsets()
            self._schedule()
            self._kubelets()
            self._statuses()
            self._endpoints()
            self._apiservices()
            self.passes += 1

    # -- helpers ------------------------------------------------------------------------

    def _list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        return self.store.list_ref(self.t[kind], namespace)[0]

    def _set_status(self, kind: str, obj: Obj, status: dict[str, Any]) -> None:
        if obj.get("status") != status:
            self.store.modify(self.t[kind], obj["metadata"].get("namespace"), obj["metadata"]["name"],
                              lambda d: {**d, "status": status}, subresource="status")

    def _create(self, kind: str, namespace: str, obj: Obj) -> None:
        try:
            self.store.create(self.t[kind], namespace, obj)
        except ApiError as exc:
            log.debug("sandbox controllers: could not create %s: %s", kind, exc.message)

    def _delete(self, rtype: ResourceType, obj: Obj) -> None:
        try:
            self.store.delete(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        except ApiError:
            pass

    def _owned_pods(self, owner: Obj) -> list[Obj]:
        return [p for p in self._list("Pod", owner["metadata"]["namespace"]) if controlled_by(p, owner)]

    def _pod_from_template(self, owner: Obj, template: dict[str, Any], extra_labels: dict[str, str]) -> Obj:
        meta = copy.deepcopy(template.get("metadata") or {})
        meta["labels"] = {**(meta.get("labels") or {}), **extra_labels}
        meta["ownerReferences"] = [owner_ref(owner)]
        meta.pop("name", None)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}

    # -- passes -------------------------------------------------------------------------

    def _kubelet_gone(self, key: tuple[str, str], obj: Obj) -> bool:
        """A terminating pod on a NotReady node is never confirmed gone: its kubelet cannot report
        (Kubernetes keeps it Terminating until the node returns or the Node object is deleted)."""
        if key != ("", "pods"):
            return False
        node = self.store.find(self.t["Node"], None, (obj.get("spec") or {}).get("nodeName") or "")
        return node is not None and not node_ready(node)

    def _node_passwords(self) -> None:
        secrets = self.store.registry.by_kind("", "Secret")
        while self._removed_nodes and secrets is not None:
            name = self._removed_nodes.pop()
            if self.store.find(self.t["Node"], None, name) is None:
                self.store.force_remove(secrets, "kube-system", f"{name}.node-password.k3s")

    def _namespaces(self) -> None:
        for ns in self._list("Namespace"):
            name = ns["metadata"]["name"]
            if ns["metadata"].get("deletionTimestamp"):
                for key in self.store.namespaced_keys():
                    rtype = self.store.registry.for_key(key)
                    for okey in self.store.list_namespace(key, name):
                        if rtype:
                            self.store.force_remove(rtype, name, okey[1])
                self.store.force_remove(self.t["Namespace"], None, name)
            elif self.store.find(self.t["ServiceAccount"], name, "default") is None:
                self._create("ServiceAccount", name, {"metadata": {"name": "default", "namespace": name}})

    def _garbage_collect(self) -> None:
        nodes = {n["metadata"]["name"] for n in self._list("Node")}
        for key in list(self.store.namespaced_keys()) + [("", "nodes"), ("", "namespaces")]:
            rtype = self.store.registry.for_key(key)
            if rtype is None:
                continue
            for obj in self.store.list_ref(rtype)[0]:
                refs = obj["metadata"].get("ownerReferences") or []
                if refs and not any(self.store.by_uid(r.get("uid", "")) for r in refs):
                    if obj["metadata"].get("deletionTimestamp"):
                        continue
                    self._delete(rtype, obj)
                elif key == ("", "pods"):
                    node = (obj.get("spec") or {}).get("nodeName")
                    if node and node not in nodes:
                        self.store.force_remove(rtype, obj["metadata"]["namespace"], obj["metadata"]["name"])

    def _deployments(self) -> None:
        for dep in self._list("Deployment"):
            if dep["metadata"].get("deletionTimestamp"):
                continue
            ns, spec = dep["metadata"]["namespace"], dep.get("spec") or {}
            template = spec.get("template") or {}
            thash = template_hash(template)
            name = f"{dep['metadata']['name']}-{thash}"
            replicas = int(spec.get("replicas", 1))
            owned = [rs for rs in self._list("ReplicaSet", ns) if controlled_by(rs, dep)]
            current = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
            if current is None:
                tmpl = copy.deepcopy(template)
                tmpl.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = thash
                selector = copy.deepcopy(spec.get("selector") or {})
                selector.setdefault("matchLabels", {})["pod-template-hash"] = thash
                self._create("ReplicaSet", ns, {
                    "metadata": {"name": name, "namespace": ns, "labels": dict(tmpl["metadata"]["labels"]),
                                 "annotations": {"deployment.kubernetes.io/revision": str(len(owned) + 1)},
                                 "ownerReferences": [owner_ref(dep)]},
                    "spec": {"replicas": replicas, "selector": selector, "template": tmpl},
                })
            elif int((current.get("spec") or {}).get("replicas", 1)) != replicas:
                self.store.modify(self.t["ReplicaSet"], ns, name,
                                  lambda d, r=replicas: d["spec"].__setitem__("replicas", r))
            for rs in owned:
                if rs["metadata"]["name"] != name and int((rs.get("spec") or {}).get("replicas", 1)) != 0:
                    self.store.modify(self.t["ReplicaSet"], ns, rs["metadata"]["name"],
                                      lambda d: d["spec"].__setitem__("replicas", 0))

    def _replicasets(self) -> None:
        for rs in self._list("ReplicaSet"):
            if rs["metadata"].get("deletionTimestamp"):
                continue
            spec = rs.get("spec") or {}
            want = int(spec.get("replicas", 1))
            live = [p for p in self._owned_pods(rs) if not p["metadata"].get("deletionTimestamp")]
            for _ in range(want - len(live)):
                pod = self._pod_from_template(rs, spec.get("template") or {}, {})
                pod["metadata"]["generateName"] = f"{rs['metadata']['name']}-"
                self._create("Pod", rs["metadata"]["namespace"], pod)
            for pod in sorted(live, key=lambda p: disruption.pod_ready(p))[: max(0, len(live) - want)]:
                self._delete(self.t["Pod"], pod)

    def _statefulsets(self) -> None:
        for sts in self._list("StatefulSet"):
            if sts["metadata"].get("deletionTimestamp"):
                continue
            spec, ns = sts.get("spec") or {}, sts["metadata"]["namespace"]
            want = int(spec.get("replicas", 1))
            pods = {p["metadata"]["name"]: p for p in self._owned_pods(sts)}
            for ordinal in range(want):
                pname = f"{sts['metadata']['name']}-{ordinal}"
                if pname not in pods:
                    pod = self._pod_from_template(sts, spec.get("template") or {},
                                                  {"statefulset.kubernetes.io/pod-name": pname})
                    pod["metadata"]["name"] = pname
                    self._create("Pod", ns, pod)
            for pname, pod in pods.items():
                ordinal = pname.rsplit("-", 1)[-1]
                if ordinal.isdigit() and int(ordinal) >= want and not pod["metadata"].get("deletionTimestamp"):
                    self._delete(self.t["Pod"], pod)

    def _daemonsets(self) -> None:
        nodes = self._list("Node")
        for ds in self._list("DaemonSet"):
            if ds["metadata"].get("deletionTimestamp"):
                continue
            spec, ns = ds.get("spec") or {}, ds["metadata"]["namespace"]
            template = spec.get("template") or {}
            pod_spec = template.get("spec") or {}
            owned = self._owned_pods(ds)
            on_node = {(p.get("spec") or {}).get("nodeName") for p in owned
                       if not p["metadata"].get("deletionTimestamp")}
            for node in nodes:
                nname = node["metadata"]["name"]
                if nname in on_node or node["metadata"].get("deletionTimestamp"):
                    continue
                if not node_fits(node, pod_spec, DAEMONSET_TOLERATIONS):
                    continue
                pod = self._pod_from_template(ds, template, {"controller-revision-hash": template_hash(template)})
                pod["metadata"]["generateName"] = f"{ds['metadata']['name']}-"
                pod["spec"]["nodeName"] = nname
                tolerations = list(pod["spec"].get("tolerations") or [])
                pod["spec"]["tolerations"] = tolerations + [t for t in DAEMONSET_TOLERATIONS if t not in tolerations]
                self._create("Pod", ns, pod)

    def _schedule(self) -> None:
        nodes = [n for n in self._list("Node") if node_ready(n) and not n["metadata"].get("deletionTimestamp")]
        pods = self._list("Pod")
        load: dict[str, int] = {n["metadata"]["name"]: 0 for n in nodes}
        for pod in pods:
            bound = (pod.get("spec") or {}).get("nodeName")
            if bound in load:
                load[bound] += 1
        for pod in pods:
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            fits = [n for n in nodes if node_fits(n, spec)]
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if not fits:
                message = f"0/{len(load)} nodes are available: no node fits the pod's tolerations and node selector."
                cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}

                def unschedulable(d: Obj, c: dict[str, Any] = cond) -> None:
                    status = d.setdefault("status", {})
                    status["phase"] = "Pending"
                    conds = [x for x in status.get("conditions") or [] if x.get("type") != "PodScheduled"]
                    if any(x.get("type") == "PodScheduled" and x.get("message") == c["message"]
                           for x in status.get("conditions") or []):
                        conds = status["conditions"]
                    else:
                        conds.append({**c, "lastTransitionTime": now_rfc3339()})
                    status["conditions"] = conds

                self.store.modify(self.t["Pod"], ns, name, unschedulable, subresource="status")
                continue
            target = min(fits, key=lambda n: (load[n["metadata"]["name"]], n["metadata"]["name"]))
            tname = target["metadata"]["name"]
            load[tname] += 1
            self.store.modify(self.t["Pod"], ns, name, lambda d, n=tname: d["spec"].__setitem__("nodeName", n))

    def _kubelets(self) -> None:
        nodes = {n["metadata"]["name"]: n for n in self._list("Node")}
        for pod in self._list("Pod"):
            spec, meta = pod.get("spec") or {}, pod["metadata"]
            node = nodes.get(spec.get("nodeName", ""))
            if node is None:
                continue
            status = pod.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                continue
            if meta.get("deletionTimestamp") and status.get("phase") != "Running":
                continue
            want = self._pod_status(pod, node, node_ready(node))
            if want != status:
                self.store.modify(self.t["Pod"], meta["namespace"], meta["name"],
                                  lambda d, s=want: {**d, "status": s}, subresource="status")

    @staticmethod
    def _pod_status(pod: Obj, node: Obj, ready: bool) -> dict[str, Any]:
        old = pod.get("status") or {}
        flag = "True" if ready else "False"
        old_conds = {c.get("type"): c for c in old.get("conditions") or []}

        def cond(ctype: str, value: str) -> dict[str, Any]:
            previous = old_conds.get(ctype)
            if previous and previous.get("status") == value:
                return previous
            return {"type": ctype, "status": value, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}

        started = old.get("startTime") or now_rfc3339()
        old_cs = {c.get("name"): c for c in old.get("containerStatuses") or []}
        containers = []
        uid = pod["metadata"]["uid"]
        for c in (pod.get("spec") or {}).get("containers") or []:
            prev = old_cs.get(c.get("name"))
            running = (prev or {}).get("state", {}).get("running") or {"startedAt": started}
            containers.append({
                "name": c.get("name"), "image": c.get("image", ""), "imageID": f"sandbox://{c.get('image', '')}",
                "containerID": "containerd://" + hashlib.sha256(f"{uid}/{c.get('name')}".encode()).hexdigest(),
                "ready": ready, "started": True, "restartCount": 0, "state": {"running": running},
            })
        addresses = (node.get("status") or {}).get("addresses") or []
        host_ip = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "127.0.0.1")
        return {
            "phase": "Running",
            "conditions": [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"),
                           cond("Ready", flag), cond("ContainersReady", flag), cond("PodScheduled", "True")],
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": old.get("podIP") or _pod_ip(pod["metadata"]["uid"]),
            "podIPs": [{"ip": old.get("podIP") or _pod_ip(pod["metadata"]["uid"])}],
            "startTime": started, "qosClass": old.get("qosClass", "BestEffort"),
            "containerStatuses": containers,
        }

    def _statuses(self) -> None:
        for rs in self._list("ReplicaSet"):
            pods = [p for p in self._owned_pods(rs) if not p["metadata"].get("deletionTimestamp")]
            ready = sum(1 for p in pods if disruption.pod_ready(p))
            labels = (rs.get("spec") or {}).get("template", {}).get("metadata", {}).get("labels") or {}
            self._set_status("ReplicaSet", rs, {
                "replicas": len(pods),
                "fullyLabeledReplicas": sum(1 for p in pods if all(
                    (p["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())),
                "readyReplicas": ready, "availableReplicas": ready,
                "observedGeneration": rs["metadata"].get("generation", 1),
            })
        for dep in self._list("Deployment"):
            self._deployment_status(dep)
        for ds in self._list("DaemonSet"):
            pods = [p for p in self._owned_pods(ds) if not p["metadata"].get("deletionTimestamp")]
            ready = sum(1 for p in pods if disruption.pod_ready(p))
            self._set_status("DaemonSet", ds, {
                "currentNumberScheduled": len(pods), "desiredNumberScheduled": len(pods), "numberMisscheduled": 0,
                "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": len(pods),
                "numberUnavailable": len(pods) - ready, "observedGeneration": ds["metadata"].get("generation", 1),
            })
        for sts in self._list("StatefulSet"):
            pods = [p for p in self._owned_pods(sts) if not p["metadata"].get("deletionTimestamp")]
            ready = sum(1 for p in pods if disruption.pod_ready(p))
            self._set_status("StatefulSet", sts, {
                "replicas": len(pods), "readyReplicas": ready, "currentReplicas": len(pods),
                "updatedReplicas": len(pods), "availableReplicas": ready,
                "observedGeneration": sts["metadata"].get("generation", 1),
            })
        namespaces = {p["metadata"]["namespace"] for p in self._list("PodDisruptionBudget")}
        for ns in sorted(namespaces):
            disruption.refresh_namespace(self.store, ns)

    def _endpoints(self) -> None:
        """The endpoints controller: each Service with a selector gets the Endpoints it implies."""
        while self._removed_services:  # the controller deletes the Endpoints of a deleted Service
            ns, name = self._removed_services.pop()
            ep = self.store.find(self.t["Endpoints"], ns, name)
            if ep is not None and self.store.find(self.t["Service"], ns, name) is None:
                self._delete(self.t["Endpoints"], ep)
        for svc in self._list("Service"):
            meta, spec = svc["metadata"], svc.get("spec") or {}
            if not spec.get("selector") or spec.get("type") == "ExternalName":
                continue  # no selector: the Endpoints are the user's (Kubernetes docs, "Services without selectors")
            want = {"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                 "labels": dict(meta.get("labels") or {})}}
            pods = self._list("Pod", meta["namespace"])
            self._slices(svc, pods)
            subsets = endpoint_subsets(svc, pods)
            if subsets:
                want["subsets"] = subsets
            current = self.store.find(self.t["Endpoints"], meta["namespace"], meta["name"])
            if current is None:
                self._create("Endpoints", meta["namespace"], want)
            elif current.get("subsets") != want.get("subsets") or \
                    current["metadata"].get("labels") != want["metadata"]["labels"]:
                def put(d: Obj, w: Obj = want) -> Obj:
                    d["metadata"]["labels"] = w["metadata"]["labels"]
                    d.pop("subsets", None)
                    if "subsets" in w:
                        d["subsets"] = w["subsets"]
                    return d
                self.store.modify(self.t["Endpoints"], meta["namespace"], meta["name"], put)

    def _slices(self, svc: Obj, pods: list[Obj]) -> None:
        meta = svc["metadata"]
        want = {s["metadata"]["name"]: s for s in endpoint_slices(svc, pods)}
        ours = [s for s in self._list("EndpointSlice", meta["namespace"]) if controlled_by(s, svc)]
        for current in ours:
            if current["metadata"]["name"] not in want:
                self._delete(self.t["EndpointSlice"], current)
        for name, slice_ in want.items():
            current = self.store.find(self.t["EndpointSlice"], meta["namespace"], name)
            if current is None:
                self._create("EndpointSlice", meta["namespace"], slice_)
            elif any(current.get(f) != slice_.get(f) for f in ("endpoints", "ports")):
                self.store.modify(self.t["EndpointSlice"], meta["namespace"], name,
                                  lambda d, w=slice_: {**d, "endpoints": w["endpoints"], "ports": w["ports"]})

    def _apiservices(self) -> None:
        for api in self._list("APIService"):
            svc_ref = (api.get("spec") or {}).get("service")
            svc = ep = None
            if svc_ref:
                svc = self.store.find(self.t["Service"], svc_ref.get("namespace"), svc_ref.get("name") or "")
                ep = self.store.find(self.t["Endpoints"], svc_ref.get("namespace"), svc_ref.get("name") or "")
            status, reason, message = apiservice_available(api, svc, ep)
            conds = [c for c in (api.get("status") or {}).get("conditions") or [] if c.get("type") != "Available"]
            old = next((c for c in (api.get("status") or {}).get("conditions") or []
                        if c.get("type") == "Available"), None)
            if old and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
                continue
            moved = old is None or old.get("status") != status
            conds.append({"type": "Available", "status": status,
                          "lastTransitionTime": now_rfc3339() if moved else old.get("lastTransitionTime"),
                          "reason": reason, "message": message})
            self._set_status("APIService", api, {**(api.get("status") or {}), "conditions": conds})

    def _deployment_status(self, dep: Obj) -> None:
        ns, spec = dep["metadata"]["namespace"], dep.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        current_name = f"{dep['metadata']['name']}-{template_hash(spec.get('template') or {})}"
        owned = [rs for rs in self._list("ReplicaSet", ns) if controlled_by(rs, dep)]
        total = updated = ready = updated_ready = 0
        for rs in owned:
            pods = [p for p in self._owned_pods(rs) if not p["metadata"].get("deletionTimestamp")]
            n_ready = sum(1 for p in pods if disruption.pod_ready(p))
            total += len(pods)
            ready += n_ready
            if rs["metadata"]["name"] == current_name:
                updated, updated_ready = len(pods), n_ready
        old = dep.get("status") or {}
        old_conds = {c.get("type"): c for c in old.get("conditions") or []}

        def cond(ctype: str, value: str, reason: str, message: str) -> dict[str, Any]:
            previous = old_conds.get(ctype)
            moment = now_rfc3339()
            transition = previous["lastTransitionTime"] if previous and previous.get("status") == value else moment
            if previous and previous.get("status") == value and previous.get("reason") == reason:
                return previous
            return {"type": ctype, "status": value, "lastUpdateTime": moment, "lastTransitionTime": transition,
                    "reason": reason, "message": message}

        available = ready >= replicas - _max_unavailable(spec)
        complete = updated == replicas and total == replicas and updated_ready == replicas
        status: dict[str, Any] = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [
                cond("Available", "True" if available else "False",
                     "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                     "Deployment has minimum availability." if available
                     else "Deployment does not have minimum availability."),
                cond("Progressing", "True", "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                     f'ReplicaSet "{current_name}" has successfully progressed.' if complete
                     else f'ReplicaSet "{current_name}" is progressing.'),
            ],
        }
        if total - ready > 0:
            status["unavailableReplicas"] = total - ready
        for key in ("readyReplicas", "availableReplicas", "updatedReplicas", "replicas"):
            if status[key] == 0:
                status.pop(key)
        self._set_status("Deployment", dep, status)


def _target_port(svc_port: dict[str, Any], pod: Obj) -> int | None:
    """The pod port a Service port sends to: ``targetPort`` as a number, or the container port of
    that name (None when the pod has none: the pod is left out for that port), or ``port``."""
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target and cp.get("protocol", "TCP") == svc_port.get("protocol", "TCP"):
                return int(cp["containerPort"])
    return None


def _service_pods(svc: Obj, pods: list[Obj]) -> Iterator[tuple[Obj, list[dict[str, Any]]]]:
    """The pods a Service selects that can be endpoints (a ``podIP``, not terminal), each with the
    Service's ports resolved on it (``name`` "" when unnamed; ports the pod lacks left out)."""
    spec = svc.get("spec") or {}
    selector = spec.get("selector") or {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ports = []
        for sp in spec.get("ports") or []:
            target = _target_port(sp, pod)
            if target is not None:
                ports.append({"name": sp.get("name", ""), "port": target, "protocol": sp.get("protocol", "TCP")})
        yield pod, ports


def endpoint_subsets(svc: Obj, pods: list[Obj]) -> list[dict[str, Any]]:
    """The ``subsets`` of a Service's Endpoints, as Kubernetes' endpoints controller builds them
    (``pkg/controller/endpoint``; API reference "Endpoints v1"; "Services without selectors").

    Args:
        svc: the Service (``spec.selector`` a plain label map, ``spec.ports[]``).
        pods: the pods of its namespace.

    Pods that match the selector, have a ``podIP``, are not terminal and not being deleted are
    endpoints: Ready ones (condition ``Ready`` True, or any with ``publishNotReadyAddresses``) in
    ``addresses``, the others in ``notReadyAddresses``. Each carries ``ip``, ``nodeName`` and a
    ``targetRef`` to the pod. Ports are the Service's ports with ``targetPort`` resolved on the pod
    (a named one from its containers' ports). Pods with the same resolved ports share a subset;
    addresses are sorted by IP (the controller's ``RepackSubsets``).
    """
    spec = svc.get("spec") or {}
    groups: dict[str, dict[str, Any]] = {}
    for pod, resolved in _service_pods(svc, pods):
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp") or (spec.get("ports") and not resolved):
            continue
        ports = [{k: v for k, v in port.items() if k != "name" or v} for port in resolved]  # unnamed: no name
        key = json.dumps(ports, sort_keys=True)
        group = groups.setdefault(key, {"ports": ports, "addresses": [], "notReadyAddresses": []})
        address = {"ip": status["podIP"], "nodeName": (pod.get("spec") or {}).get("nodeName"),
                   "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                                 "uid": meta["uid"]}}
        ready = spec.get("publishNotReadyAddresses") or disruption.pod_ready(pod)
        group["addresses" if ready else "notReadyAddresses"].append(address)
    subsets = []
    for key in sorted(groups):
        group = groups[key]
        subset: dict[str, Any] = {}
        for field in ("addresses", "notReadyAddresses"):
            if group[field]:
                subset[field] = sorted(group[field], key=lambda a: tuple(int(x) for x in a["ip"].split(".")))
        if group["ports"]:
            subset["ports"] = sorted(group["ports"], key=lambda p: (p.get("name", ""), p["port"]))
        subsets.append(subset)
    return subsets


def endpoint_slices(svc: Obj, pods: list[Obj]) -> list[Obj]:
    """The ``discovery.k8s.io/v1`` EndpointSlices of a Service with a selector, as Kubernetes'
    EndpointSlice controller makes them (docs "EndpointSlices"; API reference "EndpointSlice v1").

    One slice per set of resolved ports (at most 100 endpoints a slice is not modelled), named
    ``<service>-<5 chars>``, labelled ``kubernetes.io/service-name`` and
    ``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``, owned by the
    Service, ``addressType: IPv4``. Each endpoint: ``addresses [podIP]``, ``conditions``
    (``ready``: Ready and not terminating; ``serving``: Ready; ``terminating``: being deleted),
    ``nodeName``, ``targetRef``. Pods without an IP or terminal are left out.
    """
    meta, spec = svc["metadata"], svc.get("spec") or {}
    groups: dict[str, dict[str, Any]] = {}
    for pod, ports in _service_pods(svc, pods):
        pmeta, status = pod["metadata"], pod.get("status") or {}
        key = json.dumps(ports, sort_keys=True)
        ready = disruption.pod_ready(pod)
        terminating = bool(pmeta.get("deletionTimestamp"))
        groups.setdefault(key, {"ports": ports, "endpoints": []})["endpoints"].append({
            "addresses": [status["podIP"]],
            "conditions": {"ready": (ready or bool(spec.get("publishNotReadyAddresses"))) and not terminating,
                           "serving": ready, "terminating": terminating},
            "nodeName": (pod.get("spec") or {}).get("nodeName"),
            "targetRef": {"kind": "Pod", "namespace": pmeta["namespace"], "name": pmeta["name"], "uid": pmeta["uid"]},
        })
    if not groups:  # the controller keeps one (empty) slice for a Service without endpoints
        groups[json.dumps([])] = {"ports": [], "endpoints": []}
    slices = []
    for key, group in sorted(groups.items()):
        suffix = hashlib.sha256(f"{meta.get('uid', meta['name'])}/{key}".encode()).hexdigest()[:5]
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{meta['name']}-{suffix}", "namespace": meta["namespace"],
                         "labels": {**(meta.get("labels") or {}), "kubernetes.io/service-name": meta["name"],
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [owner_ref(svc)]},
            "addressType": "IPv4",
            "endpoints": sorted(group["endpoints"], key=lambda e: tuple(int(x) for x in e["addresses"][0].split("."))),
            "ports": group["ports"],
        })
    return slices


def apiservice_available(api: Obj, svc: Obj | None, endpoints: Obj | None) -> tuple[str, str, str]:
    """``(status, reason, message)`` of an APIService's ``Available`` condition, as kube-aggregator's
    ``AvailableConditionController`` (``pkg/controllers/status``) sets it.

    Args:
        api: the APIService; ``spec.service`` (``namespace``, ``name``, ``port`` default 443) or nil.
        svc, endpoints: the Service and Endpoints it names (None when absent).

    ``spec.service`` nil: True, ``Local``. Otherwise False with ``ServiceNotFound`` (no Service),
    ``ServicePortError`` (no Service port equal to ``spec.service.port``), ``EndpointsNotFound``,
    ``MissingEndpoints`` (no ready address for that port), else True with ``Passed``.
    """
    ref = (api.get("spec") or {}).get("service")
    if not ref:
        return "True", "Local", "Local APIServices are always available"
    ns, name, want = ref.get("namespace"), ref.get("name"), int(ref.get("port") or 443)
    if svc is None:
        return "False", "ServiceNotFound", f'service/{name} in "{ns}" is not present'
    if (svc.get("spec") or {}).get("type") == "ExternalName":
        return "True", "Passed", "all checks passed"
    port = next((p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == want), None)
    if port is None:
        return "False", "ServicePortError", f'service/{name} in "{ns}" is not listening on port {want}'
    if endpoints is None:
        return "False", "EndpointsNotFound", f'cannot find endpoints for service/{name} in "{ns}"'
    for subset in endpoints.get("subsets") or []:
        if subset.get("addresses") and any(p.get("name", "") == port.get("name", "")
                                           for p in subset.get("ports") or []):
            return "True", "Passed", "all checks passed"
    return "False", "MissingEndpoints", (f'endpoints for service/{name} in "{ns}" have no addresses with port '
                                         f'name "{port.get("name", "")}"')


def _max_unavailable(spec: dict[str, Any]) -> int:
    rolling = ((spec.get("strategy") or {}).get("rollingUpdate") or {})
    return disruption.resolve(rolling.get("maxUnavailable", "25%"), int(spec.get("replicas", 1)), False)
