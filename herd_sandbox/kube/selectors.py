"""Label and field selectors, as the Kubernetes API evaluates them.

Label selector syntax (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/):
equality (``k=v``, ``k==v``, ``k!=v``), set-based (``k in (a,b)``, ``k notin (a,b)``), existence
(``k``, ``!k``); requirements are ANDed with commas. Field selectors take ``=``, ``==`` and ``!=``
on a per-type list of field paths
(https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from herd_sandbox.kube.errors import ApiError, bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\((.*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> Predicate:
    """Compile a ``labelSelector`` query string into a predicate on objects.

    Args:
        text: the selector; None or empty selects everything.

    Returns:
        A function taking an object dict and returning True when its ``metadata.labels`` match.

    Raises:
        ApiError: 400 BadRequest for a selector the real server would also refuse to parse.
    """
    if not text or not text.strip():
        return lambda obj: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for raw in _split_top(text):
        m = _SET_RE.match(raw)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
            continue
        m = _EQ_RE.match(raw)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        m = _EXISTS_RE.match(raw)
        if m:
            neg, key = m.groups()
            if neg:
                checks.append(lambda labels, k=key: k not in labels)
            else:
                checks.append(lambda labels, k=key: k in labels)
            continue
        raise bad_request(f"unable to parse requirement: {raw.strip()!r}: invalid label selector")

    def predicate(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def match_label_selector(selector: dict[str, Any] | None, labels: dict[str, str] | None) -> bool:
    """Evaluate a structured ``LabelSelector`` (matchLabels + matchExpressions) against labels.

    An empty selector matches everything; a None selector matches nothing (as for a PDB or a
    controller without a selector). Operators: In, NotIn, Exists, DoesNotExist.
    """
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string form of a dotted field path as field selectors compare it (missing → ``""``).

    Booleans compare as ``true``/``false``, as the real field-label conversion renders them.
    """
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def parse_field_selector(text: str | None, allowed: tuple[str, ...], kind: str = "") -> Predicate:
    """Compile a ``fieldSelector`` into a predicate.

    Args:
        text: e.g. ``spec.nodeName=n1,status.phase!=Succeeded``; None or empty selects everything.
        allowed: field paths the type supports besides ``metadata.name`` and ``metadata.namespace``.
        kind: used in the error message.

    Raises:
        ApiError: 400 BadRequest for a malformed requirement or a field the type does not
            support (``field label not supported``), as the real server answers.
    """
    if not text or not text.strip():
        return lambda obj: True
    supported = ("metadata.name", "metadata.namespace") + tuple(allowed)
    checks: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", raw)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{raw}'")
        path, op, value = m.groups()
        if path not in supported:
            raise ApiError(400, "BadRequest", f'field label not supported: {path}' + (f" for {kind}" if kind else ""))
        checks.append((path, op == "!=", value))

    def predicate(obj: dict[str, Any]) -> bool:
        for path, negate, value in checks:
            if (field_value(obj, path) == value) == negate:
                return False
        return True

    return predicate
