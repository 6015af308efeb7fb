"""The three PATCH bodies the API server accepts, plus server-side apply.

- JSON merge patch (RFC 7386), ``application/merge-patch+json``;
- strategic merge patch, ``application/strategic-merge-patch+json``: merge patch with list
  merge keys and the directives ``$patch`` (replace/delete/merge), ``$retainKeys``,
  ``$setElementOrder/<list>`` and ``$deleteFromPrimitiveList/<list>``
  (https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md);
  the merge keys are those of the built-in types kubectl touches (``patchMergeKey`` tags in
  the API reference); other lists are replaced, as for fields without a patch strategy
  (``NodeSpec.taints`` has none: kubectl taint sends the whole new list);
- JSON patch (RFC 6902), ``application/json-patch+json``;
- server-side apply, ``application/apply-patch+yaml``: applied here as a strategic merge of the
  applied configuration, after removing the map fields the same field manager applied last time
  and no longer applies (no managedFields, no field-ownership conflicts).
"""

from __future__ import annotations

import copy
from typing import Any

from herd_sandbox.kube.errors import ApiError, bad_request

# List fields merged by key: a dotted path from the object root (checked first) or a field name → merge key.
MERGE_KEYS: dict[str, str] = {
    "spec.ports": "port",  # Service
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "addresses": "type",
    "ownerReferences": "uid",
    "containerStatuses": "name",
    "hostAliases": "ip",
    "secrets": "name",  # ServiceAccount
    "topologySpreadConstraints": "topologyKey",
}
# Lists of scalars merged as sets.
PRIMITIVE_MERGE = {"finalizers"}

_DIRECTIVES = ("$patch", "$retainKeys")
_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; returns a new value (inputs are not changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def dropped_fields(previous: Any, current: Any) -> dict[str, Any]:
    """A merge patch removing the map fields a manager applied before and no longer applies.

    Server-side apply removes fields the same field manager stopped applying; this models it
    for maps (recursively). Lists are left to the strategic merge of the new configuration.
    """
    if not isinstance(previous, dict) or not isinstance(current, dict):
        return {}
    removal: dict[str, Any] = {}
    for key, value in previous.items():
        if key not in current:
            removal[key] = None
        elif isinstance(value, dict) and isinstance(current[key], dict):
            nested = dropped_fields(value, current[key])
            if nested:
                removal[key] = nested
    return removal


def _merge_key(path: tuple[str, ...]) -> str | None:
    dotted = ".".join(path)
    if dotted in MERGE_KEYS:  # a full path from the root (Service spec.ports) wins over the field name
        return MERGE_KEYS[dotted]
    return MERGE_KEYS.get(path[-1]) if path else None


def strategic_merge(original: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch to ``original``; returns a new value.

    Args:
        original: the current object (or sub-value).
        patch: the patch (or sub-patch).
        path: field names from the object root (list indices left out), used to pick list merge keys.

    Raises:
        ApiError: 400 BadRequest for an unknown ``$patch`` directive value.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge", "delete"):
        raise bad_request(f"Unknown patch type: {directive!r}")
    result = dict(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key in _DIRECTIVES or key.startswith(_ORDER) or key.startswith(_DELETE_PRIMITIVE):
            continue
        sub = path + (key,)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = strategic_merge(result.get(key), value, sub)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, sub)
        else:
            result[key] = value
    for key, value in patch.items():
        if key.startswith(_DELETE_PRIMITIVE):
            name = key[len(_DELETE_PRIMITIVE):]
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in value]
        elif key.startswith(_ORDER):
            name = key[len(_ORDER):]
            if isinstance(result.get(name), list):
                result[name] = _reorder(result[name], value, _merge_key(path + (name,)))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(original: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    original = list(original) if isinstance(original, list) else []
    name = path[-1] if path else ""
    if name in PRIMITIVE_MERGE:
        merged = list(original)
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    key = _merge_key(path)
    if key is None or not all(isinstance(i, dict) for i in patch):
        return [copy.deepcopy(i) for i in patch]
    merged = list(original)
    for item in patch:
        ident = item.get(key)
        index = next((n for n, o in enumerate(merged) if isinstance(o, dict) and o.get(key) == ident), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
            continue
        if index is None:
            merged.append(strategic_merge({}, item, path))
        else:
            merged[index] = strategic_merge(merged[index], item, path)
    return merged


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(value: Any) -> Any:
        return value.get(key) if key and isinstance(value, dict) else value

    wanted = [ident(o) for o in order]
    placed = [i for w in wanted for i in items if ident(i) == w]
    rest = [i for i in items if ident(i) not in wanted]
    return placed + rest


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; returns a new document.

    Raises:
        ApiError: 422 when a ``test`` fails or a path does not exist, 400 for a malformed patch.
    """
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation {op!r}")
        kind = op["op"]
        try:
            parts = _pointer(op["path"])
            if kind == "test":
                if _resolve(doc, parts) != op.get("value"):
                    raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(_resolve(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = _remove(doc, _pointer(op["from"]))
                doc = _add(doc, parts, value)
            elif kind == "add":
                doc = _add(doc, parts, copy.deepcopy(op.get("value")))
            elif kind == "remove":
                doc = _remove(doc, parts)
            elif kind == "replace":
                _resolve(doc, parts)  # must exist
                doc = _add(_remove(doc, parts), parts, copy.deepcopy(op.get("value")))
            else:
                raise bad_request(f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                           f"{kind} operation does not apply: doc is missing path: {op['path']!r}") from exc
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            index = int(last)
            if index > len(parent):
                raise IndexError(index)
            parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(last)
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return None
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.pop(int(last))
    else:
        del parent[last]
    return doc
