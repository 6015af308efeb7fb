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

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
import tenacity

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
    """A small IMDSv2 client.

    Args:
        endpoint: base URL (``http://169.254.169.254``); ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
            wins when set.
        token_ttl_s: requested token lifetime, seconds (1–21600).
        timeout_s: per-request timeout, seconds.
        attempts: tries per request on 5xx/connection errors/timeouts.
        clock: monotonic seconds (tests inject one).
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
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._clock = clock
        self._backoff_max_s = backoff_max_s
        self._session = requests.Session()
        self._session.trust_env = False  # never route IMDS through a proxy
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()
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
        """Close the HTTP session."""
        self._session.close()

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=0.1, max=self._backoff_max_s),
            retry=tenacity.retry_if_exception_type((_Retryable, requests.ConnectionError, requests.Timeout)),
            reraise=True,
        )

    def token(self, *, force: bool = False) -> str:
        """A valid session token, fetched or renewed when needed.

        Raises:
            ImdsError: no token after the retries.
        """
        with self._lock:
            margin = max(60.0, self.token_ttl_s / 10)
            if not force and self._token and self._clock() < self._token_expires - min(margin, self.token_ttl_s / 2):
                return self._token
            try:
                for attempt in self._retrying():
                    with attempt:
                        started = self._clock()
                        r = self._session.put(
                            self.endpoint + TOKEN_PATH, headers={TTL_HEADER: str(self.token_ttl_s)},
                            timeout=self.timeout_s,
                        )
                        if r.status_code >= 500:
                            raise _Retryable(f"HTTP {r.status_code}")
                        if r.status_code != 200:
                            raise ImdsError(f"IMDS refused a token (HTTP {r.status_code} on PUT {TOKEN_PATH})")
            except (_Retryable, requests.RequestException) as exc:
                raise ImdsError(f"IMDS at {self.endpoint} gave no token after {self.attempts} tries: {exc}") from None
            self._token = r.text.strip()
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
        url = self.endpoint + path
        refreshed = False
        try:
            for attempt in self._retrying():
                with attempt:
                    r = self._session.get(url, headers={TOKEN_HEADER: self.token()}, timeout=self.timeout_s)
                    if r.status_code == 401 and not refreshed:
                        refreshed = True
                        self.token(force=True)
                        raise _Retryable("token expired")
                    if r.status_code >= 500:
                        raise _Retryable(f"HTTP {r.status_code}")
        except (_Retryable, requests.RequestException) as exc:
            raise ImdsError(f"IMDS GET {path} failed after {self.attempts} tries: {exc}") from None
        if r.status_code == 404:
            if optional:
                return None
            raise ImdsError(f"IMDS has no {path} (HTTP 404)", exit_code=ExitCode.DATA)
        if r.status_code != 200:
            raise ImdsError(f"IMDS GET {path}: HTTP {r.status_code}")
        return r.text

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
