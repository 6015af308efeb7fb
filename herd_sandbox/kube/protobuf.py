"""Decoding of Kubernetes protobuf request bodies for the few kinds typed clients send that way.

client-go's typed clientsets (helm's release storage, for one) send
``application/vnd.kubernetes.protobuf`` bodies: the 4-byte magic ``k8s\\0`` then a
``runtime.Unknown`` message (typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2) whose ``raw`` is
the object in the field numbering of k8s.io/api's ``generated.proto``
(https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding). Only the kinds
in :data:`SCHEMAS` are decoded; the result is the object's JSON form. Responses stay JSON.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from herd_sandbox.kube.errors import ApiError

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# message name → {field number: (json name, type)}; types: string, bytes, int, bool, time,
# msg:<Name>, map:string, map:bytes, list:string, list:msg:<Name>.
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
                   5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
                   8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map:string"),
                   12: ("annotations", "map:string"), 13: ("ownerReferences", "list:msg:OwnerReference"),
                   14: ("finalizers", "list:string")},
    "OwnerReference": {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                       5: ("apiVersion", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")},
    "Secret": {1: ("metadata", "msg:ObjectMeta"), 2: ("data", "map:bytes"), 3: ("type", "string"),
               4: ("stringData", "map:string"), 5: ("immutable", "bool")},
    "ConfigMap": {1: ("metadata", "msg:ObjectMeta"), 2: ("data", "map:string"), 3: ("binaryData", "map:bytes"),
                  4: ("immutable", "bool")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "msg:Preconditions"),
                      3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "string"),
                      5: ("dryRun", "list:string")},
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
    "Lease": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:LeaseSpec")},
    "LeaseSpec": {1: ("holderIdentity", "string"), 2: ("leaseDurationSeconds", "int"), 3: ("acquireTime", "microtime"),
                  4: ("renewTime", "microtime"), 5: ("leaseTransitions", "int")},
    "SelfSubjectAccessReview": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:SelfSubjectAccessReviewSpec")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "msg:ResourceAttributes"),
                                    2: ("nonResourceAttributes", "msg:NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                           4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
                           7: ("name", "string")},
    "NonResourceAttributes": {1: ("path", "string"), 2: ("verb", "string")},
    "Eviction": {1: ("metadata", "msg:ObjectMeta"), 2: ("deleteOptions", "msg:DeleteOptions")},
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: ints for varints, bytes for length-delimited."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _time(data: bytes, micro: bool) -> str:
    parts = dict(_fields(data))
    seconds = int(parts.get(1, 0))  # type: ignore[arg-type]
    nanos = int(parts.get(2, 0))  # type: ignore[arg-type]
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos // 1000:06d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    """Decode one message of schema ``name`` into its JSON form (unknown fields are dropped)."""
    schema = SCHEMAS[name]
    obj: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        key, kind = schema[number]
        if kind == "string":
            obj[key] = bytes(value).decode()  # type: ignore[arg-type]
        elif kind == "bytes":
            obj[key] = base64.b64encode(bytes(value)).decode()  # type: ignore[arg-type]
        elif kind == "int":
            number_value = int(value)  # type: ignore[arg-type]
            obj[key] = number_value - (1 << 64) if number_value >= 1 << 63 else number_value
        elif kind == "bool":
            obj[key] = bool(value)
        elif kind in ("time", "microtime"):
            obj[key] = _time(bytes(value), kind == "microtime")  # type: ignore[arg-type]
        elif kind.startswith("msg:"):
            obj[key] = decode_message(kind[4:], bytes(value))  # type: ignore[arg-type]
        elif kind.startswith("map:"):
            entry = dict(_fields(bytes(value)))  # type: ignore[arg-type]
            raw = bytes(entry.get(2, b""))  # type: ignore[arg-type]
            text = base64.b64encode(raw).decode() if kind == "map:bytes" else raw.decode()
            obj.setdefault(key, {})[bytes(entry.get(1, b"")).decode()] = text  # type: ignore[arg-type]
        elif kind == "list:string":
            obj.setdefault(key, []).append(bytes(value).decode())  # type: ignore[arg-type]
        elif kind.startswith("list:msg:"):
            obj.setdefault(key, []).append(decode_message(kind[9:], bytes(value)))  # type: ignore[arg-type]
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """Decode a ``k8s\\0``-framed protobuf body into the object's JSON form.

    Raises:
        ApiError: 415 UnsupportedMediaType for a kind without a schema here, 400 for a malformed body.
    """
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "provided protobuf body does not begin with the k8s magic prefix")
    try:
        envelope = dict(_fields(body[len(MAGIC):]))
        type_meta = dict(_fields(bytes(envelope.get(1, b""))))  # type: ignore[arg-type]
        api_version = bytes(type_meta.get(1, b"")).decode()  # type: ignore[arg-type]
        kind = bytes(type_meta.get(2, b"")).decode()  # type: ignore[arg-type]
        if kind not in SCHEMAS:
            raise ApiError(415, "UnsupportedMediaType", f"the sandbox API server cannot decode {kind or 'this'} "
                           "from protobuf; send application/json")
        obj = decode_message(kind, bytes(envelope.get(2, b"")))  # type: ignore[arg-type]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequest", f"the protobuf body could not be decoded: {exc}") from exc
    return {"apiVersion": api_version, "kind": kind, **obj}
