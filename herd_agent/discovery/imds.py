"""IMDSv2 client: session tokens, retries, and the paths the agent reads.

Behaviour from AWS's "Use the Instance Metadata Service" docs: ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` (1–21600) returns a token; every GET carries it in
``X-aws-ec2-metadata-token``; a missing or expired token answers 401. IMDSv1 (token-less GETs)
is never used.

The token is cached and renewed when less than a tenth of its TTL (at least 60 s) is left, or at
once after a 401. 5xx answers, connection errors and timeouts are retried with exponential backoff
(tenacity); 404 means "not there" and is returned as None where a path is optional.
The endpoint is ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` when set (as the AWS SDKs do), else config
``imds.endpoint``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from herd_agent.errors import ExitCode, HerdError
from herd_agent.redact import register_secret

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class ImdsError(HerdError):
    """IMDS did not answer usefully after retries (exit 69, unavailable)."""

    exit_code = ExitCode.UNAVAILABLE


class _Retryable(Exception):
    pass


class ImdsClient:
    """A small IMDSv2 client over one keep-alive HTTP connection (stdlib ``http.client``).

    IMDS is plain HTTP on a link-local address: no TLS, no proxies, no cookies, so the standard
    library's client is all it takes, and it keeps the resident watcher small (``requests`` alone
    would cost it ~15 MiB). Retries use tenacity, imported on the first failure only.

    Args:
        endpoint: base URL (``http://169.254.169.254``); ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
            wins when set.
        token_ttl_s: requested token lifetime, seconds (1–21600).
        timeout_s: per-request timeout, seconds.
        attempts: tries per request on 5xx/connection errors/timeouts.
        clock: monotonic seconds (tests inject one).
        backoff_max_s: longest wait between two tries, seconds.
    """

    def __init__(
        self,
        endpoint: str = "http://169.254.169.254",
        *,
        token_ttl_s: int = 21600,
        timeout_s: float = 2.0,
        attempts: int = 5,
        clock: Callable[[], float] = time.monotonic,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.endpoint = (os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or endpoint).rstrip("/")
        parts = urlsplit(self.endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ImdsError(f"IMDS endpoint must be an http:// URL, got {self.endpoint!r}", exit_code=ExitCode.CONFIG)
        self._host, self._port = parts.hostname, parts.port or 80
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._clock = clock
        self._backoff_max_s = backoff_max_s
        self._conn: http.client.HTTPConnection | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.RLock()
        self.token_fetches = 0

    @classmethod
    def from_config(cls, cfg: Any) -> ImdsClient:
        """Build from the ``imds.*`` config keys."""
        return cls(
            cfg.get("imds.endpoint"),
            token_ttl_s=cfg.get("imds.token_ttl_s"),
            timeout_s=cfg.get("imds.timeout_s"),
            attempts=cfg.get("imds.attempts"),
        )

    def close(self) -> None:
        """Close the HTTP connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
        """One request on the kept-alive connection; (status, body). Raises _Retryable on transport
        errors (after dropping the connection) and on 5xx."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
                self._conn.request(method, path, headers=headers)
                resp = self._conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                if resp.will_close:
                    self.close()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if resp.status >= 500:
            raise _Retryable(f"HTTP {resp.status}")
        return resp.status, body

    def _with_retries(self, fn: Callable[[], Any]) -> Any:
        """``fn()``; on a retryable failure, up to ``attempts`` tries in all with exponential backoff."""
        try:
            return fn()
        except _Retryable:
            if self.attempts <= 1:
                raise
        import tenacity  # only once something failed: the idle watcher never pays for it

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts - 1),
            wait=tenacity.wait_exponential(multiplier=0.1, max=self._backoff_max_s),
            retry=tenacity.retry_if_exception_type(_Retryable),
            reraise=True,
        )(fn)

    def token(self, *, force: bool = False) -> str:
        """A valid session token, fetched or renewed when needed.

        Raises:
            ImdsError: no token after the retries.
        """
        with self._lock:
            margin = max(60.0, self.token_ttl_s / 10)
            if not force and self._token and self._clock() < self._token_expires - min(margin, self.token_ttl_s / 2):
                return self._token
            started = self._clock()
            try:
                status, body = self._with_retries(
                    lambda: self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)}))
            except _Retryable as exc:
                raise ImdsError(f"IMDS at {self.endpoint} gave no token after {self.attempts} tries: {exc}") from None
            if status != 200:
                raise ImdsError(f"IMDS refused a token (HTTP {status} on PUT {TOKEN_PATH})")
            self._token = body.strip()
            register_secret(self._token)
            self._token_expires = started + self.token_ttl_s
            self.token_fetches += 1
            return self._token

    def get(self, path: str, *, optional: bool = False) -> str | None:
        """GET a metadata path (``/latest/meta-data/instance-id``) with the token.

        Args:
            optional: return None on 404 instead of raising.

        Raises:
            ImdsError: 404 on a required path, another 4xx, or no answer after the retries.
        """
        def once() -> tuple[int, str]:
            status, body = self._request("GET", path, {TOKEN_HEADER: self.token()})
            if status == 401:  # expired or revoked: a new token, then this path again
                status, body = self._request("GET", path, {TOKEN_HEADER: self.token(force=True)})
            return status, body

        try:
            status, body = self._with_retries(once)
        except _Retryable as exc:
            raise ImdsError(f"IMDS GET {path} failed after {self.attempts} tries: {exc}") from None
        if status == 404:
            if optional:
                return None
            raise ImdsError(f"IMDS has no {path} (HTTP 404)", exit_code=ExitCode.DATA)
        if status != 200:
            raise ImdsError(f"IMDS GET {path}: HTTP {status}")
        return body

    def get_json(self, path: str, *, optional: bool = False) -> Any:
        """GET and decode JSON (None on an optional 404)."""
        text = self.get(path, optional=optional)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ImdsError(f"IMDS {path} is not JSON: {exc}", exit_code=ExitCode.DATA) from None

    # The paths the agent uses ---------------------------------------------------------------------
    def identity_document(self) -> dict[str, Any]:
        """``/latest/dynamic/instance-identity/document``: instanceId, region, availabilityZone, privateIp, …"""
        return dict(self.get_json("/latest/dynamic/instance-identity/document"))

    def tags(self) -> dict[str, str] | None:
        """Instance tags from ``meta-data/tags/instance``, or None when metadata tags are disabled (404)."""
        listing = self.get("/latest/meta-data/tags/instance", optional=True)
        if listing is None:
            return None
        out: dict[str, str] = {}
        for key in filter(None, (k.strip() for k in listing.splitlines())):
            value = self.get(f"/latest/meta-data/tags/instance/{key}", optional=True)
            if value is not None:
                out[key] = value
        return out

    def target_lifecycle_state(self) -> str | None:
        """``meta-data/autoscaling/target-lifecycle-state`` (InService, Terminated, …) or None."""
        text = self.get("/latest/meta-data/autoscaling/target-lifecycle-state", optional=True)
        return text.strip() if text else None

    def spot_instance_action(self) -> dict[str, Any] | None:
        """``meta-data/spot/instance-action`` (``{"action", "time"}``) or None until an interruption."""
        return self.get_json("/latest/meta-data/spot/instance-action", optional=True)

    def rebalance_recommendation(self) -> dict[str, Any] | None:
        """``meta-data/events/recommendations/rebalance`` (``{"noticeTime"}``) or None."""
        return self.get_json("/latest/meta-data/events/recommendations/rebalance", optional=True)

    def scheduled_events(self) -> list[dict[str, Any]]:
        """``meta-data/events/maintenance/scheduled``: a list of events (empty when none)."""
        return list(self.get_json("/latest/meta-data/events/maintenance/scheduled", optional=True) or [])
