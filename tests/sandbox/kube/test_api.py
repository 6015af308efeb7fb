"""API conventions of the emulated server, checked over raw HTTPS: shapes, codes, watches, deletion."""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any

import pytest

from herd_sandbox.kube.sandbox import KubeSandbox

from .conftest import Api, deployment, running_pods

NS = "/api/v1/namespaces/default"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


def cm(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}, **extra},
            "data": {"k": "v"}}


def bare_pod(name: str, node: str | None = None, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "example/x:1"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta}, "spec": spec}


def test_discovery_documents(api: Api) -> None:
    assert api.get("/version").json()["gitVersion"].startswith("v1.32")
    assert api.get("/api").json()["versions"] == ["v1"]
    groups = {g["name"]: g for g in api.get("/apis").json()["groups"]}
    assert {"apps", "policy", "coordination.k8s.io", "events.k8s.io", "rbac.authorization.k8s.io",
            "apiextensions.k8s.io"} <= set(groups)
    assert groups["policy"]["preferredVersion"]["groupVersion"] == "policy/v1"
    core = {r["name"]: r for r in api.get("/api/v1").json()["resources"]}
    assert core["pods/eviction"] == {"name": "pods/eviction", "singularName": "", "namespaced": True,
                                     "kind": "Eviction", "verbs": ["create"], "group": "policy", "version": "v1"}
    assert core["nodes"]["namespaced"] is False and "no" in core["nodes"]["shortNames"]
    apps = {r["name"] for r in api.get("/apis/apps/v1").json()["resources"]}
    assert {"deployments", "deployments/scale", "daemonsets", "statefulsets/status"} <= apps
    assert api.get("/apis/nope/v1").status_code == 404
    assert api.get("/openapi/v2").json()["swagger"] == "2.0"
    assert api.get("/openapi/v3").status_code == 404


def test_create_sets_server_fields_and_duplicate_is_409(api: Api) -> None:
    created = api.post(f"{NS}/configmaps", cm("one"))
    assert created.status_code == 201
    meta = created.json()["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert meta["namespace"] == "default"
    second = api.post(f"{NS}/configmaps", cm("two")).json()["metadata"]
    assert int(second["resourceVersion"]) > int(meta["resourceVersion"])  # one global counter

    dup = api.post(f"{NS}/configmaps", cm("one"))
    assert dup.status_code == 409
    assert dup.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": 'configmaps "one" already exists', "reason": "AlreadyExists",
                          "details": {"name": "one", "group": "", "kind": "configmaps"}, "code": 409}


def test_errors_are_status_objects(api: Api) -> None:
    missing = api.get(f"{NS}/configmaps/nope")
    assert missing.status_code == 404
    assert missing.json()["reason"] == "NotFound" and missing.json()["message"] == 'configmaps "nope" not found'
    bad = api.post(f"{NS}/configmaps", cm("Bad_Name"))
    assert bad.status_code == 422 and bad.json()["reason"] == "Invalid"
    assert bad.json()["details"]["causes"][0]["field"] == "metadata.name"
    no_ns = api.post("/api/v1/namespaces/ghost/configmaps", cm("x"))
    assert no_ns.status_code == 404 and no_ns.json()["message"] == 'namespaces "ghost" not found'
    assert api.get("/api/v1/pods?fieldSelector=spec.bogus=x").status_code == 400
    assert api.get(f"{NS}/configmaps", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_stale_update_is_409_conflict(api: Api) -> None:
    lease = api.post(LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                              "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}).json()
    lease["spec"]["holderIdentity"] = "b"
    assert api.put(f"{LEASES}/l", lease).status_code == 200
    lease["spec"]["holderIdentity"] = "c"
    stale = api.put(f"{LEASES}/l", lease)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    assert "the object has been modified" in stale.json()["message"]
    # a patch carrying a stale resourceVersion is a precondition too
    stale_patch = api.patch(f"{LEASES}/l", {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                                            "spec": {"holderIdentity": "d"}})
    assert stale_patch.status_code == 409


def test_list_shape_and_label_selectors(api: Api) -> None:
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db", "env": "prod"}),
                         ("c", {"tier": "web"})):
        api.post(f"{NS}/configmaps", cm(name, labels))

    def names(selector: str) -> list[str]:
        body = api.get(f"{NS}/configmaps", params={"labelSelector": selector}).json()
        assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1"
        assert body["metadata"]["resourceVersion"]
        return [i["metadata"]["name"] for i in body["items"]]

    assert names("tier=web") == ["a", "c"]
    assert names("tier==web,env=prod") == ["a"]
    assert names("tier!=web") == ["b"]
    assert names("tier in (db, cache)") == ["b"]
    assert names("tier notin (db),env") == ["a"]
    assert names("!env") == ["c"]
    assert names("") == ["a", "b", "c"]


def test_field_selectors_on_pods(kube_sandbox: KubeSandbox, api: Api) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.add_node("node-b")
    kube_sandbox.seed(bare_pod("p1", "node-a"), bare_pod("p2", "node-b"), bare_pod("p3", "node-a"))
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 3)

    def names(selector: str) -> list[str]:
        items = api.get("/api/v1/pods", params={"fieldSelector": selector}).json()["items"]
        return [i["metadata"]["name"] for i in items]

    assert names("spec.nodeName=node-a") == ["p1", "p3"]
    assert names("spec.nodeName!=node-a") == ["p2"]
    assert names("spec.nodeName==node-a,metadata.name!=p1") == ["p3"]
    assert names("metadata.namespace=default,status.phase=Running") == ["p1", "p2", "p3"]
    assert names("status.phase=Pending") == []


def test_generation_counts_spec_changes_and_status_is_separate(kube_sandbox: KubeSandbox, api: Api) -> None:
    dep = api.post("/apis/apps/v1/namespaces/default/deployments", deployment("web", 0)).json()
    path = "/apis/apps/v1/namespaces/default/deployments/web"
    assert dep["metadata"]["generation"] == 1
    assert api.patch(path, {"metadata": {"labels": {"x": "y"}}}).json()["metadata"]["generation"] == 1
    assert api.patch(path, {"spec": {"replicas": 0, "paused": True}}).json()["metadata"]["generation"] == 2
    # status written through the main resource is ignored; through /status it sticks
    api.patch(path, {"status": {"replicas": 42}})
    assert api.get(path).json().get("status", {}).get("replicas") != 42
    scale = api.get(f"{path}/scale").json()
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 0
    scale["spec"]["replicas"] = 3
    assert api.put(f"{path}/scale", scale).json()["spec"]["replicas"] == 3
    assert api.get(path).json()["spec"]["replicas"] == 3


def test_finalizers_hold_deletion_until_removed(api: Api) -> None:
    api.post(f"{NS}/configmaps", cm("held", finalizers=["example.com/hold"]))
    deleted = api.delete(f"{NS}/configmaps/held")
    assert deleted.status_code == 200
    held = api.get(f"{NS}/configmaps/held").json()
    assert held["metadata"]["deletionTimestamp"]
    with_new = api.patch(f"{NS}/configmaps/held", {"metadata": {"finalizers": ["example.com/hold", "other/x"]}})
    assert with_new.status_code == 422
    api.patch(f"{NS}/configmaps/held", [{"op": "remove", "path": "/metadata/finalizers"}], kind="json")
    assert api.get(f"{NS}/configmaps/held").status_code == 404


def test_graceful_pod_deletion_uses_grace_period_and_time_factor(kube_sandbox: KubeSandbox, api: Api) -> None:
    kube_sandbox.add_node("node-a")
    unbound = bare_pod("unbound")
    unbound["spec"]["nodeSelector"] = {"pool": "none"}  # fits no node, stays Pending and unbound
    kube_sandbox.seed(bare_pod("slow", "node-a"), bare_pod("fast", "node-a"), unbound)
    kube_sandbox.wait_for(lambda: len(running_pods(kube_sandbox)) == 2)
    kube_sandbox.time_factor = 1000  # 30 s grace would take hours: the pod must stay terminating

    slow = api.delete(f"{NS}/pods/slow").json()
    assert slow["metadata"]["deletionGracePeriodSeconds"] == 30 and slow["metadata"]["deletionTimestamp"]
    assert api.get(f"{NS}/pods/slow").status_code == 200
    assert api.delete(f"{NS}/pods/fast", {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "gracePeriodSeconds": 0}).status_code == 200
    assert api.get(f"{NS}/pods/fast").status_code == 404
    pending = api.get(f"{NS}/pods/unbound").json()
    assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName")
    assert pending["status"]["conditions"][0]["reason"] == "Unschedulable"
    api.delete(f"{NS}/pods/unbound")  # never scheduled: removed at once
    assert api.get(f"{NS}/pods/unbound").status_code == 404

    api.delete(f"{NS}/pods/slow", params={"gracePeriodSeconds": "1"})  # shortening is allowed
    kube_sandbox.time_factor = 0.01
    api.delete(f"{NS}/pods/slow", params={"gracePeriodSeconds": "1"})
    kube_sandbox.wait_for(lambda: kube_sandbox.find("Pod", "slow") is None, timeout=5)


def _watch_lines(api: Api, path: str, count: int | None = None, **params: str) -> list[dict[str, Any]]:
    """Events of a watch: the first ``count`` (then hang up), or all until the server ends the stream."""
    response = api.get(path, params={"watch": "true", **params}, stream=True)
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    events = []
    with response:
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if count is not None and len(events) == count:
                break
    return events


def test_watch_resumes_from_a_resource_version_and_ends_at_timeout(api: Api) -> None:
    first = api.post(f"{NS}/configmaps", cm("a")).json()
    api.patch(f"{NS}/configmaps/a", {"data": {"k": "2"}})
    api.post(f"{NS}/configmaps", cm("b", {"pick": "me"}))
    api.delete(f"{NS}/configmaps/a")

    # the server ends the stream after timeoutSeconds: every retained event after the version, no more
    events = _watch_lines(api, f"{NS}/configmaps", resourceVersion=first["metadata"]["resourceVersion"],
                          timeoutSeconds="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert events[0]["object"]["data"] == {"k": "2"}

    selected = _watch_lines(api, f"{NS}/configmaps", 1, resourceVersion=first["metadata"]["resourceVersion"],
                            labelSelector="pick=me")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in selected] == [("ADDED", "b")]
    api.post(f"{NS}/configmaps", cm("c"))

    initial = _watch_lines(api, f"{NS}/configmaps", 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "b"), ("ADDED", "c")]


def test_watch_from_an_expired_version_is_410(kube_sandbox_factory: Any) -> None:
    kube = kube_sandbox_factory(history=3)
    api = Api(kube, kube.identity("admin").token)
    start = api.post(f"{NS}/configmaps", cm("a")).json()["metadata"]["resourceVersion"]
    for n in range(5):
        api.patch(f"{NS}/configmaps/a", {"data": {"n": str(n)}})

    events = _watch_lines(api, f"{NS}/configmaps", resourceVersion=start, timeoutSeconds="1")

    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["code"] == 410 and status["reason"] == "Expired"
    assert status["message"].startswith(f"too old resource version: {start}")


def test_watch_bookmarks_and_initial_events_end(kube_sandbox_factory: Any) -> None:
    kube = kube_sandbox_factory(bookmark_interval=0.2)
    api = Api(kube, kube.identity("admin").token)
    api.post(f"{NS}/configmaps", cm("a"))

    events = _watch_lines(api, f"{NS}/configmaps", allowWatchBookmarks="true", sendInitialEvents="true",
                          resourceVersionMatch="NotOlderThan", timeoutSeconds="1")

    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert any(e["type"] == "BOOKMARK" and "annotations" not in e["object"]["metadata"] for e in events[2:])


def test_strategic_merge_patch_directives(kube_sandbox: KubeSandbox, api: Api) -> None:
    kube_sandbox.add_node("node-a")
    path = "/api/v1/nodes/node-a/status"
    patch = {"status": {"$setElementOrder/conditions": [{"type": "Ready"}, {"type": "MemoryPressure"},
                                                         {"type": "DiskPressure"}, {"type": "PIDPressure"}],
                        "conditions": [{"type": "Ready", "status": "False", "reason": "Test"},
                                       {"type": "PIDPressure", "$patch": "delete"}]}}
    node = api.patch(path, patch, kind="strategic").json()
    conditions = node["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["Ready", "MemoryPressure", "DiskPressure"]
    assert conditions[0]["status"] == "False" and conditions[0]["lastHeartbeatTime"]  # merged, not replaced

    api.post(f"{NS}/pods", bare_pod("p"))
    merged = api.patch(f"{NS}/pods/p", {"spec": {"containers": [{"name": "side", "image": "example/side:1"}]},
                                        "metadata": {"$retainKeys": ["name", "namespace", "uid", "resourceVersion",
                                                                     "creationTimestamp", "generation", "labels"],
                                                     "labels": {"a": "b"}}},
                       kind="strategic").json()
    assert [c["name"] for c in merged["spec"]["containers"]] == ["main", "side"]
    assert merged["metadata"]["labels"] == {"a": "b"}

    failed = api.patch(f"{NS}/pods/p", [{"op": "test", "path": "/metadata/name", "value": "other"}], kind="json")
    assert failed.status_code == 422


def test_server_side_apply_creates_then_updates(api: Api) -> None:
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  a: '1'\n"
    created = api.patch(f"{NS}/configmaps/applied", doc, kind="apply", params={"fieldManager": "helm"})
    assert created.status_code == 201
    updated = api.patch(f"{NS}/configmaps/applied", doc.replace("'1'", "'2'"), kind="apply",
                        params={"fieldManager": "helm"})
    assert updated.status_code == 200 and updated.json()["data"] == {"a": "2"}
    api.patch(f"{NS}/configmaps/applied", {"data": {"kept": "x"}})  # another writer's field
    dropped = api.patch(f"{NS}/configmaps/applied", doc.replace("  a: '1'\n", "  b: '3'\n"), kind="apply",
                        params={"fieldManager": "helm"})
    assert dropped.json()["data"] == {"b": "3", "kept": "x"}  # helm stopped applying "a": it goes
    assert api.patch(f"{NS}/configmaps/applied", doc, kind="apply").status_code == 400  # fieldManager required


def test_table_output(kube_sandbox: KubeSandbox, api: Api) -> None:
    kube_sandbox.add_node("node-a")
    table = api.get("/api/v1/nodes", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]][:2] == ["Name", "Status"]
    assert table["rows"][0]["cells"][:2] == ["node-a", "Ready"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_namespace_deletion_removes_its_content(kube_sandbox: KubeSandbox, api: Api) -> None:
    api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scratch"}})
    api.post("/api/v1/namespaces/scratch/configmaps", cm("x"))
    terminating = api.delete("/api/v1/namespaces/scratch").json()
    assert terminating["status"]["phase"] == "Terminating"
    kube_sandbox.wait_for(lambda: kube_sandbox.find("Namespace", "scratch") is None)
    assert api.get("/api/v1/namespaces/scratch/configmaps/x").status_code == 404
    assert kube_sandbox.list("ConfigMap", "scratch") == []


def test_kubeconfigs_are_private_and_tokens_not_logged(kube_sandbox: KubeSandbox, api: Api,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = kube_sandbox.add_identity("ops", ["ops-team"])
    api.get(f"{NS}/configmaps", headers={"Authorization": "Bearer not-a-token"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(kube_sandbox.admin_kubeconfig).st_mode) == 0o600
    for name in ("admin", "ops"):
        assert kube_sandbox.identity(name).token not in caplog.text
    assert "not-a-token" not in caplog.text


def test_client_certificate_authentication(kube_sandbox: KubeSandbox, tmp_path: Any) -> None:
    kube_sandbox.add_identity("cert-user", ["system:masters"], auth="cert")
    identity = kube_sandbox.identity("cert-user")
    (tmp_path / "c.pem").write_bytes(identity.cert_pem or b"")
    (tmp_path / "k.pem").write_bytes(identity.key_pem or b"")
    api = Api(kube_sandbox)
    assert api.get("/api/v1/nodes").status_code == 401
    ok = api.get("/api/v1/nodes", cert=(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")))
    assert ok.status_code == 200 and ok.json()["kind"] == "NodeList"


def test_plain_http_endpoint_with_token(kube_sandbox: KubeSandbox) -> None:
    api = Api(kube_sandbox, kube_sandbox.identity("admin").token, base=kube_sandbox.http_url)
    assert api.get("/api/v1/namespaces").json()["kind"] == "NamespaceList"


def test_service_account_token_request(kube_sandbox: KubeSandbox, api: Api) -> None:
    api.post("/api/v1/namespaces/kube-system/serviceaccounts",
             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "herd"}})
    response = api.post("/api/v1/namespaces/kube-system/serviceaccounts/herd/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 600}})
    assert response.status_code == 201
    token = response.json()["status"]["token"]
    as_sa = Api(kube_sandbox, token)
    denied = as_sa.get("/api/v1/nodes")
    assert denied.status_code == 403
    assert denied.json()["message"] == ('nodes is forbidden: User "system:serviceaccount:kube-system:herd" cannot '
                                        'list resource "nodes" in API group "" at the cluster scope')


def test_custom_resources_are_served_once_the_crd_is_established(api: Api) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "releases.herd.example.com"},
           "spec": {"group": "herd.example.com", "scope": "Namespaced",
                    "names": {"plural": "releases", "singular": "release", "kind": "Release", "shortNames": ["rel"]},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object"}},
                                  "subresources": {"status": {}}}]}}
    path = "/apis/herd.example.com/v1/namespaces/default/releases"
    assert api.get(path).status_code == 404
    created = api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd).json()
    assert {c["type"]: c["status"] for c in created["status"]["conditions"]}["Established"] == "True"
    assert "herd.example.com" in {g["name"] for g in api.get("/apis").json()["groups"]}
    assert {r["name"] for r in api.get("/apis/herd.example.com/v1").json()["resources"]} == {"releases",
                                                                                              "releases/status"}
    release = api.post(path, {"apiVersion": "herd.example.com/v1", "kind": "Release", "metadata": {"name": "r1"},
                              "spec": {"chart": "x"}})
    assert release.status_code == 201
    listing = api.get(path).json()
    assert listing["kind"] == "ReleaseList" and listing["items"][0]["spec"] == {"chart": "x"}

    api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/releases.herd.example.com")
    assert api.get(path).status_code == 404


def test_a_watch_ends_when_the_client_hangs_up(kube_sandbox_factory: Any) -> None:
    kube = kube_sandbox_factory(bookmark_interval=0.1)
    api = Api(kube, kube.identity("admin").token)
    response = api.get("/api/v1/nodes", params={"watch": "true"}, stream=True)
    kube.wait_for(lambda: kube.watch_count("Node") == 1)

    response.close()
    api.session.close()

    kube.wait_for(lambda: kube.watch_count("Node") == 0, timeout=5)


def test_verbs_a_resource_does_not_serve_are_405(kube_sandbox: KubeSandbox, api: Api) -> None:
    kube_sandbox.add_node("node-a")
    kube_sandbox.create(bare_pod("p", "node-a"))
    assert api.get(f"{NS}/pods/p/eviction").status_code == 405
    assert api.get("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").status_code == 405
    assert api.post(f"{NS}/pods/p", bare_pod("p")).status_code == 405
    assert api.get(f"{NS}/pods/p/status").json()["metadata"]["name"] == "p"


def test_events_are_one_set_behind_both_apis(api: Api) -> None:
    legacy = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "n.1"}, "reason": "Draining",
              "message": "drains", "type": "Normal", "involvedObject": {"kind": "Node", "name": "n"},
              "source": {"component": "herd-agent"}, "count": 2}
    api.post(f"{NS}/events", legacy)

    served = api.get("/apis/events.k8s.io/v1/namespaces/default/events/n.1").json()

    assert served["apiVersion"] == "events.k8s.io/v1" and served["eventTime"] is None
    assert (served["note"], served["regarding"], served["deprecatedSource"], served["deprecatedCount"]) == (
        "drains", {"kind": "Node", "name": "n"}, {"component": "herd-agent"}, 2)
    listed = api.get("/apis/events.k8s.io/v1/namespaces/default/events",
                     params={"fieldSelector": "regarding.name=n"}).json()
    assert listed["kind"] == "EventList" and [e["note"] for e in listed["items"]] == ["drains"]
    api.patch("/apis/events.k8s.io/v1/namespaces/default/events/n.1", {"note": "drained"})
    assert api.get(f"{NS}/events/n.1").json()["message"] == "drained"
