"""The emulator's endpoints controller and kube-aggregator's APIService availability, checked
against Kubernetes' documented behaviour (API reference "Endpoints v1", "Services without
selectors"; kube-aggregator ``AvailableConditionController``)."""

from __future__ import annotations

import time
from typing import Any

from herd_sandbox.kube.controllers import apiservice_available, endpoint_slices, endpoint_subsets


def pod(name: str, ip: str | None, ready: bool, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running",
                              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {"app": "web"},
                         **extra},
            "spec": {"nodeName": "n1",
                     "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": status}


SVC = {"metadata": {"name": "web", "namespace": "ns"},
       "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}


def test_ready_pods_are_addresses_not_ready_ones_not_ready_addresses() -> None:
    subsets = endpoint_subsets(SVC, [pod("b", "10.0.0.9", True), pod("a", "10.0.0.10", True),
                                     pod("c", "10.0.0.3", False), pod("no-ip", None, True),
                                     pod("other", "10.0.0.4", True, labels={"app": "db"}),
                                     pod("gone", "10.0.0.5", True, deletionTimestamp="2026-12-02T10:00:00Z")])
    assert len(subsets) == 1
    assert [a["ip"] for a in subsets[0]["addresses"]] == ["10.0.0.9", "10.0.0.10"]  # by IP, numerically
    assert [a["ip"] for a in subsets[0]["notReadyAddresses"]] == ["10.0.0.3"]
    assert subsets[0]["addresses"][0]["targetRef"] == {"kind": "Pod", "namespace": "ns", "name": "b", "uid": "uid-b"}
    assert subsets[0]["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]  # named targetPort resolved


def test_slices_mark_terminating_and_not_ready_endpoints() -> None:
    svc = {**SVC, "apiVersion": "v1", "kind": "Service", "metadata": {**SVC["metadata"], "uid": "svc-uid"}}
    [slice_] = endpoint_slices(svc, [pod("a", "10.0.0.1", True), pod("c", "10.0.0.3", False),
                                     pod("gone", "10.0.0.5", True, deletionTimestamp="2026-12-02T10:00:00Z")])
    assert [(e["addresses"], e["conditions"]) for e in slice_["endpoints"]] == [
        (["10.0.0.1"], {"ready": True, "serving": True, "terminating": False}),
        (["10.0.0.3"], {"ready": False, "serving": False, "terminating": False}),
        (["10.0.0.5"], {"ready": False, "serving": True, "terminating": True}),
    ]
    assert slice_["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"


def test_publish_not_ready_addresses_and_no_pods() -> None:
    svc = {**SVC, "spec": {**SVC["spec"], "publishNotReadyAddresses": True}}
    assert [a["ip"] for a in endpoint_subsets(svc, [pod("c", "10.0.0.3", False)])[0]["addresses"]] == ["10.0.0.3"]
    assert endpoint_subsets(SVC, []) == []


def test_apiservice_available_reasons() -> None:
    api = {"spec": {"service": {"namespace": "ns", "name": "web", "port": 80}}}
    svc = {"spec": {"ports": [{"name": "web", "port": 80}]}}
    assert apiservice_available({"spec": {"group": "apps"}}, None, None)[:2] == ("True", "Local")
    assert apiservice_available(api, None, None)[:2] == ("False", "ServiceNotFound")
    assert apiservice_available(api, svc, None)[:2] == ("False", "EndpointsNotFound")
    not_ready = {"subsets": endpoint_subsets(SVC, [pod("c", "10.0.0.3", False)])}
    assert apiservice_available(api, svc, not_ready)[:2] == ("False", "MissingEndpoints")
    ready = {"subsets": endpoint_subsets(SVC, [pod("a", "10.0.0.3", True)])}
    assert apiservice_available(api, svc, ready)[:2] == ("True", "Passed")
    wrong_port = {"spec": {"service": {"namespace": "ns", "name": "web"}}}  # default 443
    assert apiservice_available(wrong_port, svc, ready)[:2] == ("False", "ServicePortError")


def _await(cond: Any, what: str) -> Any:
    deadline = time.monotonic() + 60
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return got


def test_world_fills_endpoints_as_pods_come_and_removes_them_with_the_service(kube_sandbox: Any) -> None:
    kube_sandbox.add_node("n1")
    kube_sandbox.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
    kube_sandbox.create({"apiVersion": "v1", "kind": "Service", **SVC})
    kube_sandbox.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "manual", "namespace": "ns"},
                        "spec": {"ports": [{"port": 80}]}})
    ep = _await(lambda: kube_sandbox.find("Endpoints", "web", "ns"), "the Endpoints")
    assert not ep.get("subsets")
    assert kube_sandbox.find("Endpoints", "manual", "ns") is None  # no selector: left to the user
    svc = kube_sandbox.get("Service", "web", "ns")["spec"]  # the API server allocates a ClusterIP on create
    assert svc["clusterIP"].startswith("10.43.") and svc["clusterIPs"] == [svc["clusterIP"]]
    assert svc["type"] == "ClusterIP" and svc["ports"][0]["protocol"] == "TCP"
    assert kube_sandbox.get("Service", "manual", "ns")["spec"]["clusterIP"] != svc["clusterIP"]

    def drop_ip(d: dict[str, Any]) -> None:
        d["spec"].pop("clusterIP")
        d["spec"].pop("clusterIPs")
    kube_sandbox.modify("Service", "web", drop_ip, namespace="ns")
    assert kube_sandbox.get("Service", "web", "ns")["spec"]["clusterIP"] == svc["clusterIP"]  # kept on update
    kube_sandbox.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "ns"},
                        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                                 "template": {"metadata": {"labels": {"app": "web"}},
                                              "spec": pod("x", None, True)["spec"]}}})
    subsets = _await(lambda: [s for s in (kube_sandbox.get("Endpoints", "web", "ns").get("subsets") or [])
                              if len(s.get("addresses") or []) == 2], "two ready addresses")
    pods = kube_sandbox.list("Pod", "ns")
    assert {a["ip"] for a in subsets[0]["addresses"]} == {p["status"]["podIP"] for p in pods}
    slices = _await(lambda: [s for s in kube_sandbox.list("EndpointSlice", "ns", api_version="discovery.k8s.io/v1")
                             if s["metadata"]["labels"].get("kubernetes.io/service-name") == "web"
                             and len(s["endpoints"]) == 2], "the EndpointSlice with two endpoints")
    assert len(slices) == 1 and slices[0]["addressType"] == "IPv4"
    assert slices[0]["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]
    assert all(e["conditions"] == {"ready": True, "serving": True, "terminating": False}
               for e in slices[0]["endpoints"])
    assert slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == \
        "endpointslice-controller.k8s.io"
    kube_sandbox.delete("Service", "web", "ns")
    _await(lambda: kube_sandbox.find("Endpoints", "web", "ns") is None, "the Endpoints removed with the Service")
    _await(lambda: not kube_sandbox.list("EndpointSlice", "ns", api_version="discovery.k8s.io/v1",
                                         where=lambda s: s["metadata"]["labels"].get("kubernetes.io/service-name")
                                         == "web"), "the slice garbage-collected with its Service")
