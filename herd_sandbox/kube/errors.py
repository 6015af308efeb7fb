"""API errors as the real server reports them: ``meta.k8s.io/v1`` Status objects.

Shapes follow k8s.io/apimachinery's ``StatusReason`` documentation
(https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as a Status object.

    Args:
        code: HTTP status code (404, 409, 422, ...).
        reason: the StatusReason (``NotFound``, ``AlreadyExists``, ``Conflict``, ``Invalid``, ...).
        message: human-readable message, worded as the real server words it.
        details: the Status ``details`` (``name``, ``group``, ``kind``, ``causes``, ``retryAfterSeconds``).
    """

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The Status object body for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    """404 NotFound: ``pods "x" not found``."""
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
                    {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource})


def already_exists(resource: str, group: str, name: str) -> ApiError:
    """409 AlreadyExists: ``leases.coordination.k8s.io "x" already exists``."""
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists',
                    {"name": name, "group": group, "kind": resource})


def conflict(resource: str, group: str, name: str) -> ApiError:
    """409 Conflict for a stale resourceVersion, worded as the real optimistic-concurrency error."""
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "group": group, "kind": resource},
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid with field causes given as (reason, field, message) tuples.

    The message joins the causes as ``<field>: <message>`` after ``<Kind> "<name>" is invalid``.
    """
    text = "; ".join(f"{f}: {m}" for _, f, m in causes)
    qualified = f"{kind}.{group}" if group else kind
    return ApiError(
        422, "Invalid", f'{qualified} "{name}" is invalid: {text}',
        {"name": name, "group": group, "kind": kind,
         "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes]},
    )


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed", message)


def gone(message: str) -> ApiError:
    """410 Expired (``too old resource version``)."""
    return ApiError(410, "Expired", message)


def unsupported_media_type(content_type: str) -> ApiError:
    """415 UnsupportedMediaType for a body type the endpoint does not take."""
    return ApiError(415, "UnsupportedMediaType", f'the body of the request was in an unknown format - accepted '
                    f'media types include: application/json-patch+json, application/merge-patch+json, '
                    f'application/apply-patch+yaml, application/strategic-merge-patch+json ({content_type})')
