"""boto3 clients, built in one place.

boto3 is imported inside :func:`client`, never at module import, so the resident watcher pays for
it only when it makes an AWS call. Clients honour the standard ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_<SERVICE>`` variables (boto3 does this itself) and use botocore's ``standard``
retry mode, which retries throttling errors (``RequestLimitExceeded``, ``Throttling``,
``ThrottlingException``) and 5xx with backoff.

AWS errors are mapped to agent errors with :func:`translate`: ``AccessDenied`` names the action
(exit 77), so the fix — the IAM policy — is obvious.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from herd_agent.errors import ExitCode, HerdError

_lock = threading.Lock()
_clients: dict[tuple[str, str | None], Any] = {}

ACCESS_DENIED_CODES = {
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess", "AuthFailure",
}


class AwsError(HerdError):
    """An AWS call failed for good. ``code`` is the AWS error code, ``action`` the API action."""

    def __init__(self, message: str, *, code: str, action: str, exit_code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message, exit_code=exit_code)
        self.code = code
        self.action = action


def client(service: str, region: str | None = None, *, max_attempts: int = 5) -> Any:
    """A cached boto3 client for ``service`` (``ec2``, ``autoscaling``, ``ssm``, ``secretsmanager``).

    Args:
        region: AWS region; None lets boto3 decide (``AWS_REGION``/``AWS_DEFAULT_REGION``).
        max_attempts: total attempts in botocore's standard retry mode (first try included).
    """
    key = (service, region)
    with _lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"mode": "standard", "max_attempts": max_attempts}, connect_timeout=5, read_timeout=20)
            _clients[key] = boto3.session.Session().client(service, region_name=region, config=cfg)
        return _clients[key]


def reset_clients() -> None:
    """Forget cached clients (tests that switch endpoints or credentials call this)."""
    with _lock:
        _clients.clear()


def translate(exc: Exception, action: str) -> Exception:
    """Map a botocore ``ClientError`` to :class:`AwsError` with a message that names the fix.

    Args:
        action: the IAM action, e.g. ``ec2:DescribeInstances``.

    Returns the original exception for anything else.
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return exc
    err = response.get("Error", {})
    code = str(err.get("Code", "Unknown"))
    message = str(err.get("Message", ""))
    if code in ACCESS_DENIED_CODES:
        return AwsError(
            f"AWS refused {action} ({code}): allow {action} in the instance role's IAM policy. "
            f"AWS said: {message}",
            code=code, action=action, exit_code=ExitCode.NO_PERM,
        )
    return AwsError(f"{action} failed: {code}: {message}", code=code, action=action)


def call(service_client: Any, action: str, **kwargs: Any) -> Any:
    """``service_client.<action>(**kwargs)`` with errors translated (see :func:`translate`).

    Args:
        action: the API action in AWS spelling, e.g. ``DescribeInstances``.

    Raises:
        AwsError: the call failed after botocore's retries.
    """
    method = getattr(service_client, _snake(action))
    try:
        return method(**kwargs)
    except Exception as exc:
        prefix = getattr(getattr(getattr(service_client, "meta", None), "service_model", None), "signing_name", "")
        translated = translate(exc, f"{prefix}:{action}" if prefix else action)
        if translated is exc:
            raise
        raise translated from exc


@functools.lru_cache(maxsize=64)
def _snake(action: str) -> str:
    out = []
    for i, ch in enumerate(action):
        if ch.isupper() and i and (not action[i - 1].isupper() or (i + 1 < len(action) and action[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
