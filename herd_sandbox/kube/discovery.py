"""Discovery documents and ``meta.k8s.io/v1`` Table output, built from the resource table.

Discovery shapes follow https://kubernetes.io/docs/concepts/overview/kubernetes-api/#discovery-api:
``/api`` (APIVersions), ``/apis`` (APIGroupList), ``/api/v1`` and ``/apis/<g>/<v>``
(APIResourceList, subresources listed as ``<plural>/<sub>``). ``/openapi/v2`` is an empty
document (see :func:`openapi_v2`); ``/openapi/v3`` is 404. The aggregated (v2) discovery
format is not produced: a request preferring it gets the unaggregated document with
``Content-Type: application/json``, which client-go accepts and falls back on.

Table output follows https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables:
columns Name, any type-specific columns, Age; each row carries the object's metadata as a
``PartialObjectMetadata`` (``includeObject=Metadata``, the default) or the full object
(``includeObject=Object``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any

from herd_sandbox.kube.resources import Registry, ResourceType
from herd_sandbox.kube.selectors import field_value

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.5+k3s1",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-05-01T00:00:00Z",
    "goVersion": "go1.23.8",
    "compiler": "gc",
    "platform": "linux/amd64",
}


OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _proto_string(field: int, value: bytes) -> bytes:
    return bytes([(field << 3) | 2, len(value)]) + value


def openapi_v2(accept: str) -> tuple[str, bytes]:
    """An OpenAPI v2 document that declares no definitions, as (content type, body).

    client-go fetches ``/openapi/v2`` as protobuf (gnostic ``openapi_v2.Document``) for kubectl
    and helm validation; a document without definitions makes them skip schema validation of
    every kind (their documented behaviour for kinds the schema does not know), so manifests are
    validated by the server only. The protobuf body sets only ``swagger`` (field 1, "2.0");
    JSON is answered when protobuf is not accepted.
    """
    if "protobuf" in accept:
        return OPENAPI_V2_PROTOBUF, _proto_string(1, b"2.0")
    doc = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
           "paths": {}, "definitions": {}}
    return "application/json", json.dumps(doc).encode()


def api_versions(address: str) -> dict[str, Any]:
    """The ``/api`` document (APIVersions)."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    """The ``/apis`` document (APIGroupList), named groups only."""
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_entry(g, vs) for g, vs in registry.groups().items() if g]}


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    """The ``/apis/<group>`` document (APIGroup), or None when the group is not served."""
    versions = registry.groups().get(group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def _resource_entry(row: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": row.plural,
        "singularName": row.singular,
        "namespaced": row.namespaced,
        "kind": row.kind,
        "verbs": list(row.verbs),
    }
    if row.short_names:
        entry["shortNames"] = list(row.short_names)
    if row.categories:
        entry["categories"] = list(row.categories)
    digest = hashlib.sha256(f"{row.group}/{row.plural}".encode()).digest()
    entry["storageVersionHash"] = base64.b64encode(digest[:8]).decode()
    return entry


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    """The ``/api/v1`` or ``/apis/<g>/<v>`` document (APIResourceList), or None when not served."""
    rows = sorted((r for r in registry.all() if r.group == group and r.version == version), key=lambda r: r.plural)
    if not rows:
        return None
    resources: list[dict[str, Any]] = []
    for row in rows:
        resources.append(_resource_entry(row))
        for sub in row.subresources:
            entry: dict[str, Any] = {"name": f"{row.plural}/{sub.name}", "singularName": "",
                                     "namespaced": row.namespaced, "kind": sub.kind or row.kind,
                                     "verbs": list(sub.verbs)}
            if sub.group is not None:
                entry["group"] = sub.group
                entry["version"] = sub.version
            resources.append(entry)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": row.api_version, "resources": resources}


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    seconds = max(0, int((dt.datetime.now(dt.UTC) - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _condition(obj: dict[str, Any], ctype: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond.get("status")
    return None


def _node_cells(obj: dict[str, Any]) -> list[Any]:
    status = "Ready" if _condition(obj, "Ready") == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = (obj.get("metadata") or {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")) or ["<none>"]
    version = ((obj.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
    return [status, ",".join(roles), version]


def _pod_cells(obj: dict[str, Any]) -> list[Any]:
    status = obj.get("status") or {}
    containers = (obj.get("spec") or {}).get("containers") or []
    ready = sum(1 for c in status.get("containerStatuses") or [] if c.get("ready"))
    phase = "Terminating" if (obj.get("metadata") or {}).get("deletionTimestamp") else status.get("phase", "Pending")
    restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
    return [f"{ready}/{len(containers)}", phase, restarts, (obj.get("spec") or {}).get("nodeName", "<none>")]


# Kind-specific columns (name, type, cell function), shown between Name and Age.
_SPECIAL: dict[tuple[str, str], tuple[list[tuple[str, str]], Any]] = {
    ("", "Node"): ([("Status", "string"), ("Roles", "string"), ("Version", "string")], _node_cells),
    ("", "Pod"): ([("Ready", "string"), ("Status", "string"), ("Restarts", "integer"), ("Node", "string")],
                  _pod_cells),
}


def table(row: ResourceType, items: list[dict[str, Any]], resource_version: str,
          include_object: str = "Metadata") -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table for ``items`` of type ``row``."""
    special = _SPECIAL.get((row.group, row.kind))
    columns = [("Name", "string")]
    columns += special[0] if special else [(c[0], c[1]) for c in row.printer_columns]
    columns.append(("Age", "string"))
    definitions = [{"name": name, "type": ctype, "format": "name" if name == "Name" else "", "description": name,
                    "priority": 1 if name == "Node" else 0} for name, ctype in columns]
    rows = []
    for obj in items:
        meta = obj.get("metadata") or {}
        cells: list[Any] = [meta.get("name")]
        cells += special[1](obj) if special else [field_value(obj, c[2]) for c in row.printer_columns]
        cells.append(_age(meta.get("creationTimestamp")))
        entry: dict[str, Any] = {"cells": cells}
        if include_object == "Object":
            entry["object"] = obj
        elif include_object != "None":
            entry["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
        rows.append(entry)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}
