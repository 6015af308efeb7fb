"""Conversion between a served version and the stored one, for types served by two API groups.

Events are stored once, in the core ``v1`` form, and also served as ``events.k8s.io/v1``
with the field mapping of the Kubernetes Event API
(https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/):
``regarding`` ↔ ``involvedObject``, ``note`` ↔ ``message``, ``reportingController`` ↔
``reportingComponent``, ``deprecatedSource`` ↔ ``source``, ``deprecatedFirstTimestamp`` ↔
``firstTimestamp``, ``deprecatedLastTimestamp`` ↔ ``lastTimestamp``, ``deprecatedCount`` ↔
``count``; ``eventTime``, ``series``, ``action``, ``reason``, ``related``, ``type`` and
``reportingInstance`` keep their names. Every other type is served as stored.
"""

from __future__ import annotations

from typing import Any

from herd_sandbox.kube.resources import ResourceType

Obj = dict[str, Any]

# events.k8s.io/v1 field → core v1 field
_EVENT_FIELDS = {
    "regarding": "involvedObject",
    "note": "message",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
}
_EVENT_SHARED = ("metadata", "eventTime", "series", "action", "reason", "related", "type", "reportingInstance")


def _events_v1(rtype: ResourceType) -> bool:
    return rtype.group == "events.k8s.io"


def _rename(obj: Obj, mapping: dict[str, str], api_version: str) -> Obj:
    out: Obj = {"apiVersion": api_version, "kind": "Event"}
    for name in _EVENT_SHARED:
        if obj.get(name) is not None:
            out[name] = obj[name]
    for source, target in mapping.items():
        if obj.get(source) is not None:
            out[target] = obj[source]
    return out


def to_storage(rtype: ResourceType, obj: Any) -> Any:
    """The stored form of an object sent to ``rtype``'s endpoint (unchanged for most types)."""
    if not _events_v1(rtype) or not isinstance(obj, dict):
        return obj
    return _rename(obj, _EVENT_FIELDS, "v1")


def from_storage(rtype: ResourceType, obj: Obj) -> Obj:
    """The form ``rtype``'s endpoint serves for a stored object (the same object for most types)."""
    if not _events_v1(rtype):
        return obj
    served = _rename(obj, {v: k for k, v in _EVENT_FIELDS.items()}, rtype.api_version)
    served.setdefault("eventTime", None)  # not omitempty in events.k8s.io/v1: legacy events show null
    return served
