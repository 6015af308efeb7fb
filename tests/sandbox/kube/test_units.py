"""Pure pieces of the emulated API server: selectors, patches, budget arithmetic, RBAC rules, tolerations."""

from __future__ import annotations

from typing import Any

import pytest

from herd_sandbox.kube import patch
from herd_sandbox.kube.auth import Request, rule_allows
from herd_sandbox.kube.controllers import node_fits, tolerates
from herd_sandbox.kube.disruption import resolve
from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.selectors import match_label_selector, parse_field_selector, parse_label_selector


def labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"labels": labels}}


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("a=1", {"a": "1"}, True),
    ("a==1", {"a": "2"}, False),
    ("a!=1", {}, True),
    ("a in (1, 2),b", {"a": "2", "b": ""}, True),
    ("a notin (1,2)", {"a": "1"}, False),
    ("a notin (1,2)", {}, True),
    ("!a", {"a": "x"}, False),
    ("a,!b", {"a": "x"}, True),
])
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector)(labelled(**labels)) is expected


def test_bad_selectors_are_400() -> None:
    with pytest.raises(ApiError) as err:
        parse_label_selector("a in (1")
    assert err.value.code == 400
    with pytest.raises(ApiError) as err:
        parse_field_selector("spec.nodeName=a", allowed=(), kind="ConfigMap")
    assert err.value.code == 400 and "field label not supported: spec.nodeName" in err.value.message


def test_field_selector_compares_rendered_values() -> None:
    pick = parse_field_selector("spec.unschedulable=true,metadata.name!=b", allowed=("spec.unschedulable",))
    assert pick({"metadata": {"name": "a"}, "spec": {"unschedulable": True}})
    assert not pick({"metadata": {"name": "a"}, "spec": {}})
    assert not pick({"metadata": {"name": "b"}, "spec": {"unschedulable": True}})


def test_structured_label_selector() -> None:
    selector = {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]},
                                     {"key": "canary", "operator": "DoesNotExist"}]}
    assert match_label_selector(selector, {"app": "web", "tier": "front"})
    assert not match_label_selector(selector, {"app": "web", "canary": "1"})
    assert match_label_selector({}, {"x": "y"})
    assert not match_label_selector(None, {"x": "y"})


def test_merge_patch_is_rfc7386() -> None:
    assert patch.merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == {
        "a": {"c": 2, "d": 3}, "l": [2]}


def test_strategic_merge_lists_by_key_and_directives() -> None:
    pod = {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}],
                    "tolerations": [{"key": "x"}]},
           "metadata": {"finalizers": ["f1"]}}
    result = patch.strategic_merge(pod, {
        "spec": {"containers": [{"name": "b", "image": "2"}, {"name": "a", "$patch": "delete"}],
                 "tolerations": [{"key": "y"}]},
        "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}})
    assert result["spec"]["containers"] == [{"name": "b", "image": "2"}]
    assert result["spec"]["tolerations"] == [{"key": "y"}]  # no strategy: replaced
    assert result["metadata"]["finalizers"] == ["f2"]
    assert pod["spec"]["containers"][0] == {"name": "a", "image": "1"}  # input untouched

    replaced = patch.strategic_merge({"spec": {"x": 1, "y": 2}}, {"spec": {"$patch": "replace", "z": 3}})
    assert replaced == {"spec": {"z": 3}}
    ordered = patch.strategic_merge({"status": {"conditions": [{"type": "A"}, {"type": "B"}]}},
                                    {"status": {"$setElementOrder/conditions": [{"type": "B"}, {"type": "A"}],
                                                "conditions": [{"type": "A", "status": "True"}]}})
    assert ordered["status"]["conditions"] == [{"type": "B"}, {"type": "A", "status": "True"}]
    retained = patch.strategic_merge({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"x": 1}}},
                                     {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}})
    assert retained == {"strategy": {"type": "Recreate"}}


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    result = patch.json_patch(doc, [
        {"op": "add", "path": "/a/-", "value": 3}, {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "copy", "from": "/b", "path": "/d"}, {"op": "move", "from": "/d/c", "path": "/e"},
        {"op": "remove", "path": "/a/0"}, {"op": "test", "path": "/e", "value": 2},
        {"op": "add", "path": "/f~1g", "value": True}])
    assert result == {"a": [2, 3], "b": {"c": 2}, "d": {}, "e": 2, "f/g": True}
    with pytest.raises(ApiError) as err:
        patch.json_patch(doc, [{"op": "remove", "path": "/nope"}])
    assert err.value.code == 422


@pytest.mark.parametrize(("value", "total", "up", "expected"), [
    (2, 10, True, 2), ("50%", 3, True, 2), ("50%", 3, False, 1), ("25%", 4, True, 1), ("0%", 5, True, 0),
])
def test_int_or_percent(value: int | str, total: int, up: bool, expected: int) -> None:
    assert resolve(value, total, up) == expected


@pytest.mark.parametrize(("rule", "req", "expected"), [
    ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, Request("get", "", "pods"), True),
    ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, Request("list", "", "pods"), False),
    ({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}, Request("create", "", "pods", "eviction"), False),
    ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, Request("create", "", "pods", "eviction"), True),
    ({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["create"]}, Request("create", "", "pods", "eviction"),
     True),
    ({"apiGroups": ["apps"], "resources": ["pods"], "verbs": ["get"]}, Request("get", "", "pods"), False),
    ({"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"], "resourceNames": ["n1"]},
     Request("patch", "", "nodes", name="n2"), False),
    ({"nonResourceURLs": ["/healthz*"], "verbs": ["get"]}, Request("get", path="/healthz/etcd"), True),
])
def test_rbac_rule_matching(rule: dict[str, Any], req: Request, expected: bool) -> None:
    assert rule_allows(rule, req) is expected


def test_tolerations_and_node_fit() -> None:
    taint = {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
    assert tolerates([{"key": "dedicated", "operator": "Equal", "value": "infra"}], taint)
    assert tolerates([{"operator": "Exists"}], taint)
    assert not tolerates([{"key": "dedicated", "value": "other"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], taint)
    node = {"metadata": {"labels": {"pool": "a"}}, "spec": {"unschedulable": True}}
    assert not node_fits(node, {})
    assert node_fits(node, {"nodeSelector": {"pool": "a"}, "tolerations": [
        {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]})
    assert not node_fits({"metadata": {}, "spec": {"taints": [taint]}}, {})
    assert node_fits({"metadata": {}, "spec": {"taints": [{**taint, "effect": "PreferNoSchedule"}]}}, {})


def _pb(number: int, value: bytes | int) -> bytes:
    """Encode one protobuf field (varint for ints, length-delimited for bytes)."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def test_protobuf_secret_body_decodes_to_json() -> None:
    from herd_sandbox.kube import protobuf

    meta = (_pb(1, b"sh.helm.release.v1.demo.v1") + _pb(3, b"apps")
            + _pb(11, _pb(1, b"owner") + _pb(2, b"helm")) + _pb(14, b"f1") + _pb(8, _pb(1, 1_700_000_000)))
    secret = _pb(1, meta) + _pb(2, _pb(1, b"release") + _pb(2, b"\x00\x01")) + _pb(3, b"helm.sh/release.v1")
    body = protobuf.MAGIC + _pb(1, _pb(1, b"v1") + _pb(2, b"Secret")) + _pb(2, secret)

    assert protobuf.decode(body) == {
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1", "data": {"release": "AAE="},
        "metadata": {"name": "sh.helm.release.v1.demo.v1", "namespace": "apps", "labels": {"owner": "helm"},
                     "finalizers": ["f1"], "creationTimestamp": "2023-11-14T22:13:20Z"}}
    with pytest.raises(ApiError) as err:
        protobuf.decode(protobuf.MAGIC + _pb(1, _pb(1, b"v1") + _pb(2, b"Pod")))
    assert err.value.code == 415
    with pytest.raises(ApiError) as err:
        protobuf.decode(b"{}")
    assert err.value.code == 400
