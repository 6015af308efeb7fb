"""IMDSv2 client: session tokens, retries, bounded answers and typed properties.

Behaviour from AWS's "Use the Instance Metadata Service" docs: ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` (1–21600) returns a token; every GET carries it in
``X-aws-ec2-metadata-token``; a missing or expired token answers 401. IMDSv1 (token-less GETs)
is never used.

The token is cached and renewed when less than a tenth of its TTL (at least 60 s) is left, or at
once after a 401 (IMDS restarted, the token was revoked or expired early). 5xx answers,
connection errors and timeouts are retried with exponential backoff (tenacity); 404 means "not
there" and is returned as None where a path is optional. The endpoint is
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` when set (as the AWS SDKs do), else config ``imds.endpoint``.

**Bounded, typed input.** Every answer is read through a size bound (:data:`MAX_BODY`, 64 KiB;
:data:`MAX_USER_DATA`, 1 MiB — AWS caps user data at 16 KB), must decode as UTF-8, and is
type-checked before the agent uses it. A token must be 1–1024 visible ASCII characters (no CR/LF:
it goes into a header). An answer that breaks these rules raises :class:`ImdsBadAnswer` (exit 65)
naming the path and what was wrong; nothing downstream ever sees the raw text. The properties
return typed values (:class:`SpotAction`, :class:`RebalanceRecommendation`,
:class:`ScheduledEvent`, :class:`IdentityDocument`) in the shapes of the EC2 User Guide's
"Instance metadata categories" page. Semantic checks of identity fields (instance-id form, IP
address, DNS name) live in :mod:`herd_agent.discovery.identity`.

Tests replace the HTTP transport with a strict fake (``tests/fakes.py``: ``FakeImds``), so the
parsing and bounds run unchanged under test.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from herd_agent.errors import ExitCode, HerdError
from herd_agent.failpoints import scaled
from herd_agent.redact import register_secret

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

MAX_BODY = 64 * 1024  # bytes: every metadata answer but user data
MAX_USER_DATA = 1024 * 1024  # bytes
MAX_TOKEN = 1024  # characters (AWS tokens are about 56)
MAX_TAGS = 50  # tags per EC2 resource (EC2 user guide, "Tag restrictions")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,1024}")  # MAX_TOKEN visible ASCII characters
INSTANCE_ID_RE = re.compile(r"i-([0-9a-f]{8}|[0-9a-f]{17})")  # EC2 instance ids
_STATE_RE = re.compile(r"[A-Za-z]{1,32}(:[A-Za-z]{1,32}){0,2}")
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
MISSING: Any = object()  # an optional path answered 404

# The metadata paths the agent reads (EC2 User Guide, "Instance metadata categories").
IDENTITY_DOCUMENT = "/latest/dynamic/instance-identity/document"
INSTANCE_ID = "/latest/meta-data/instance-id"
LOCAL_IPV4 = "/latest/meta-data/local-ipv4"
LOCAL_HOSTNAME = "/latest/meta-data/local-hostname"
REGION = "/latest/meta-data/placement/region"
TAGS = "/latest/meta-data/tags/instance"
TARGET_LIFECYCLE_STATE = "/latest/meta-data/autoscaling/target-lifecycle-state"
SPOT_INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
SCHEDULED_EVENTS = "/latest/meta-data/events/maintenance/scheduled"
USER_DATA = "/latest/user-data"


class ImdsError(HerdError):
    """IMDS did not answer usefully after retries (exit 69, unavailable)."""

    exit_code = ExitCode.UNAVAILABLE


class ImdsBadAnswer(ImdsError):
    """IMDS answered, but the answer is malformed: too large, not UTF-8, not JSON, the wrong
    type or shape (exit 65, data error).

    Attributes:
        path: the metadata path; problem: what was wrong (no raw body: it may be huge or hostile).
    """

    exit_code = ExitCode.DATA

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"IMDS answer for {path} is malformed: {problem}")
        self.path = path
        self.problem = problem


class TransportError(Exception):
    """A transport-level failure worth retrying (connection refused or dropped, timeout)."""


class BodyTooLarge(Exception):
    """The answer's body is larger than the bound; ``size`` is what was seen (at least bound + 1)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"body larger than the limit ({size} bytes or more)")
        self.size = size


class Transport(Protocol):
    """One request: ``(method, path, headers, limit) -> (status, body)``.

    Raises :class:`TransportError` on connection trouble and :class:`BodyTooLarge` when the body
    exceeds ``limit`` bytes (without reading it all).
    """

    def __call__(self, method: str, path: str, headers: dict[str, str], limit: int) -> tuple[int, bytes]:
        """Send one request; (HTTP status, body of at most ``limit`` bytes)."""
        ...


class HttpTransport:
    """One keep-alive ``http.client`` connection to the IMDS endpoint, reading bounded bodies.

    IMDS is plain HTTP on a link-local address: no TLS, no proxies, no cookies, so the standard
    library's client is all it takes, and it keeps the resident watcher small (``requests`` alone
    would cost it ~15 MiB).

    Args:
        host, port: the endpoint; timeout_s: per-request timeout, seconds.
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _read_bounded(self, resp: http.client.HTTPResponse, limit: int) -> bytes:
        """The body, at most ``limit`` bytes: exactly Content-Length when given (no big read
        buffer for a small answer: the resident watcher reads three paths a second), else in
        8 KiB chunks until the end or the bound."""
        if resp.length is not None:
            return resp.read(resp.length)
        chunks, size = [], 0
        while chunk := resp.read(8192):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                self._close()
                raise BodyTooLarge(size)
        return b"".join(chunks)

    def __call__(self, method: str, path: str, headers: dict[str, str], limit: int) -> tuple[int, bytes]:
        """See :class:`Transport`."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
                self._conn.request(method, path, headers=headers)
                resp = self._conn.getresponse()
                if resp.length is not None and resp.length > limit:
                    self._close()  # never read an oversized body: drop the connection instead
                    raise BodyTooLarge(resp.length)
                body = self._read_bounded(resp, limit)
                if resp.will_close or not resp.isclosed():
                    self._close()  # a body we did not drain leaves the connection unusable
                return resp.status, body
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                raise TransportError(f"{type(exc).__name__}: {exc}") from None


# --- typed answers -----------------------------------------------------------------------------
class IdentityDocument(NamedTuple):
    """The fields of ``dynamic/instance-identity/document`` the agent uses (all type-checked
    strings; their form is checked by :func:`herd_agent.discovery.identity.read_identity`)."""

    instance_id: str
    region: str
    availability_zone: str
    private_ip: str
    instance_type: str


class SpotAction(NamedTuple):
    """``spot/instance-action``: ``action`` is terminate, stop or hibernate; ``time`` the epoch
    seconds when EC2 acts (AWS: two minutes after the notice)."""

    action: str
    time: float


class RebalanceRecommendation(NamedTuple):
    """``events/recommendations/rebalance``: ``notice_time`` in epoch seconds."""

    notice_time: float


class ScheduledEvent(NamedTuple):
    """One entry of ``events/maintenance/scheduled``.

    Attributes:
        event_id: ``instance-event-…``; code: ``instance-reboot``, ``system-reboot``,
            ``system-maintenance``, ``instance-retirement`` or ``instance-stop``; state:
            ``active``, ``completed`` or ``canceled``; not_before: as AWS writes it
            ("21 Jan 2019 09:00:43 GMT"); description: free text.
    """

    event_id: str
    code: str
    state: str
    not_before: str = ""
    description: str = ""


def parse_rfc3339(path: str, field: str, value: Any) -> float:
    """``"2015-01-05T18:02:00Z"`` → epoch seconds.

    Raises:
        ImdsBadAnswer: not a string, or not an RFC 3339 time with a zone.
    """
    if not isinstance(value, str):
        raise ImdsBadAnswer(path, f"{field} is a {type(value).__name__}, not an RFC 3339 time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ImdsBadAnswer(path, f"{field} {value[:64]!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ImdsBadAnswer(path, f"{field} {value[:64]!r} has no time zone")
    return moment.timestamp()


def _string(path: str, doc: dict[str, Any], key: str, *, required: bool = True, max_len: int = 256) -> str:
    value = doc.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise ImdsBadAnswer(path, f"{key} is {what}")
    if len(value) > max_len:
        raise ImdsBadAnswer(path, f"{key} is longer than {max_len} characters")
    return value


class ImdsClient:
    """A small IMDSv2 client with typed properties.

    Args:
        endpoint: base URL (``http://169.254.169.254``); ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
            wins when set.
        token_ttl_s: requested token lifetime, seconds (1–21600).
        timeout_s: per-request timeout, seconds.
        attempts: tries per request on 5xx/connection errors/timeouts.
        clock: monotonic seconds (tests inject one).
        backoff_max_s: longest wait between two tries, seconds.
        transport: the request function (default :class:`HttpTransport`; tests pass a strict fake).

    Raises:
        ImdsError: the endpoint is not an ``http://`` URL (exit 78).
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
        transport: Transport | None = None,
    ) -> None:
        self.endpoint = (os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or endpoint).rstrip("/")
        parts = urlsplit(self.endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ImdsError(f"IMDS endpoint must be an http:// URL, got {self.endpoint!r}", exit_code=ExitCode.CONFIG)
        self.token_ttl_s = token_ttl_s
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._clock = clock
        self._backoff_max_s = backoff_max_s
        self._http = HttpTransport(parts.hostname, parts.port or 80, timeout_s) if transport is None else None
        self._transport: Transport = transport or self._http  # type: ignore[assignment]
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.RLock()
        self.token_fetches = 0

    @classmethod
    def from_config(cls, cfg: Any, **kw: Any) -> ImdsClient:
        """Build from the ``imds.*`` config keys (``kw`` as in the constructor)."""
        return cls(
            cfg.get("imds.endpoint"),
            token_ttl_s=cfg.get("imds.token_ttl_s"),
            timeout_s=cfg.get("imds.timeout_s"),
            attempts=cfg.get("imds.attempts"),
            **kw,
        )

    def close(self) -> None:
        """Close the HTTP connection."""
        if self._http is not None:
            self._http.close()

    def _request(self, method: str, path: str, headers: dict[str, str], limit: int) -> tuple[int, bytes]:
        """One request; (status, body). Raises TransportError on 5xx and transport failures,
        ImdsBadAnswer on an oversized body."""
        try:
            status, body = self._transport(method, path, headers, limit)
        except BodyTooLarge as exc:
            raise ImdsBadAnswer(path, f"larger than {limit} bytes ({exc.size} or more)") from None
        if status >= 500:
            raise TransportError(f"HTTP {status}")
        return status, body

    def _with_retries(self, fn: Callable[[], Any]) -> Any:
        """``fn()``; on a retryable failure, up to ``attempts`` tries in all with exponential backoff."""
        try:
            return fn()
        except TransportError:
            if self.attempts <= 1:
                raise
        import tenacity  # only once something failed: the idle watcher never pays for it

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts - 1),
            wait=tenacity.wait_exponential(multiplier=0.1, max=self._backoff_max_s),
            retry=tenacity.retry_if_exception_type(TransportError),
            reraise=True,
        )(fn)

    def token(self, *, force: bool = False) -> str:
        """A valid session token, fetched or renewed when needed.

        Raises:
            ImdsError: no token after the retries.
            ImdsBadAnswer: the token is not 1–1024 visible ASCII characters (e.g. contains CR/LF).
        """
        with self._lock:
            life = scaled(self.token_ttl_s)  # the region's clock factor in tests; 1.0 in production
            margin = min(max(scaled(60.0), life / 10), life / 2)
            if not force and self._token and self._clock() < self._token_expires - margin:
                return self._token
            started = self._clock()
            try:
                status, body = self._with_retries(
                    lambda: self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.token_ttl_s)}, MAX_TOKEN))
            except TransportError as exc:
                raise ImdsError(f"IMDS at {self.endpoint} gave no token after {self.attempts} tries: {exc}") from None
            if status != 200:
                raise ImdsError(f"IMDS refused a token (HTTP {status} on PUT {TOKEN_PATH})")
            text = body.decode("ascii", "replace").strip()
            if not _TOKEN_RE.fullmatch(text):
                raise ImdsBadAnswer(TOKEN_PATH, "the token is not 1-1024 visible ASCII characters "
                                                "(a line break or control character would corrupt the request header)")
            self._token = text
            register_secret(text)
            self._token_expires = started + life
            self.token_fetches += 1
            return text

    def get_bytes(self, path: str, *, optional: bool = False, limit: int = MAX_BODY) -> bytes | None:
        """GET a metadata path with the token; the raw body, at most ``limit`` bytes.

        Args:
            path: absolute path (``/latest/meta-data/instance-id``).
            optional: return None on 404 instead of raising.

        Raises:
            ImdsError: 404 on a required path, another 4xx, or no answer after the retries.
            ImdsBadAnswer: the body is larger than ``limit``.
        """
        def once() -> tuple[int, bytes]:
            status, body = self._request("GET", path, {TOKEN_HEADER: self.token()}, limit)
            if status == 401:  # expired or revoked: a new token, then this path again
                status, body = self._request("GET", path, {TOKEN_HEADER: self.token(force=True)}, limit)
            return status, body

        try:
            status, body = self._with_retries(once)
        except TransportError as exc:
            raise ImdsError(f"IMDS GET {path} failed after {self.attempts} tries: {exc}") from None
        if status == 404:
            if optional:
                return None
            raise ImdsError(f"IMDS has no {path} (HTTP 404)", exit_code=ExitCode.DATA)
        if status != 200:
            raise ImdsError(f"IMDS GET {path}: HTTP {status}")
        return body

    def get(self, path: str, *, optional: bool = False) -> str | None:
        """GET a metadata path as text (UTF-8, at most :data:`MAX_BODY` bytes).

        Raises:
            ImdsError: as :meth:`get_bytes`. ImdsBadAnswer: too large or not UTF-8.
        """
        body = self.get_bytes(path, optional=optional)
        if body is None:
            return None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ImdsBadAnswer(path, "not UTF-8 text") from None

    def _json(self, path: str, *, optional: bool = False) -> Any:
        """The decoded JSON document, or :data:`MISSING` on an optional 404 (a JSON ``null`` is
        an answer, not an absence)."""
        text = self.get(path, optional=optional)
        if text is None:
            return MISSING
        try:
            return json.loads(text)
        except ValueError:
            raise ImdsBadAnswer(path, "not JSON") from None

    def _line(self, path: str, *, optional: bool = False) -> str | None:
        """A one-line text value, surrounding whitespace stripped (inner line breaks are kept for
        the caller's validation to reject)."""
        text = self.get(path, optional=optional)
        return None if text is None else text.strip()

    # --- typed properties ---------------------------------------------------------------------
    def identity_document(self) -> IdentityDocument:
        """``dynamic/instance-identity/document``.

        Raises:
            ImdsBadAnswer: not a JSON object, or instanceId/region/availabilityZone/privateIp
                missing or not strings.
        """
        doc = self._json(IDENTITY_DOCUMENT)
        if not isinstance(doc, dict):
            raise ImdsBadAnswer(IDENTITY_DOCUMENT, f"a JSON {type(doc).__name__}, not an object")
        return IdentityDocument(
            instance_id=_string(IDENTITY_DOCUMENT, doc, "instanceId"),
            region=_string(IDENTITY_DOCUMENT, doc, "region"),
            availability_zone=_string(IDENTITY_DOCUMENT, doc, "availabilityZone"),
            private_ip=_string(IDENTITY_DOCUMENT, doc, "privateIp"),
            instance_type=_string(IDENTITY_DOCUMENT, doc, "instanceType", required=False),
        )

    def instance_id(self) -> str:
        """``meta-data/instance-id``.

        Raises:
            ImdsBadAnswer: not ``i-`` and 8 or 17 lowercase hex digits.
        """
        value = self._line(INSTANCE_ID) or ""
        if not INSTANCE_ID_RE.fullmatch(value):
            raise ImdsBadAnswer(INSTANCE_ID, "not an EC2 instance id (i- and 8 or 17 lowercase hex digits)")
        return value

    def local_ipv4(self) -> str:
        """``meta-data/local-ipv4`` (stripped)."""
        return self._line(LOCAL_IPV4) or ""

    def region(self) -> str:
        """``meta-data/placement/region`` (stripped)."""
        return self._line(REGION) or ""

    def local_hostname(self) -> str | None:
        """``meta-data/local-hostname`` or None when IMDS has none (stripped at the ends only)."""
        return self._line(LOCAL_HOSTNAME, optional=True)

    def user_data(self) -> bytes | None:
        """``user-data`` (at most :data:`MAX_USER_DATA` bytes) or None when there is none."""
        return self.get_bytes(USER_DATA, optional=True, limit=MAX_USER_DATA)

    def tags(self) -> dict[str, str] | None:
        """Instance tags from ``meta-data/tags/instance``, or None when metadata tags are disabled (404)."""
        listing = self.get(TAGS, optional=True)
        if listing is None:
            return None
        keys = [k for k in (line.strip() for line in listing.splitlines()) if k]
        if len(keys) > MAX_TAGS:
            raise ImdsBadAnswer(TAGS, f"{len(keys)} tag keys; EC2 allows at most {MAX_TAGS} per resource")
        out: dict[str, str] = {}
        for key in keys:
            if len(key) > 128 or "/" in key or not key.isprintable():
                raise ImdsBadAnswer(TAGS, "a tag key longer than 128 characters or with '/' or control characters")
            value = self.get(f"{TAGS}/{key}", optional=True)
            if value is not None:
                out[key] = value
        return out

    def target_lifecycle_state(self) -> str | None:
        """``meta-data/autoscaling/target-lifecycle-state`` (InService, Terminated, Detached,
        Standby, Warmed:*) or None (404: not in an Auto Scaling group).

        Raises:
            ImdsBadAnswer: not a lifecycle-state word (letters, up to two ``:`` parts).
        """
        text = self._line(TARGET_LIFECYCLE_STATE, optional=True)
        if text is None:
            return None
        if not _STATE_RE.fullmatch(text):
            raise ImdsBadAnswer(TARGET_LIFECYCLE_STATE, "not a lifecycle state word")
        return text

    def spot_instance_action(self) -> SpotAction | None:
        """``meta-data/spot/instance-action``: None (404) until EC2 interrupts the instance.

        Raises:
            ImdsBadAnswer: not a JSON object with ``action`` in terminate/stop/hibernate and an
                RFC 3339 ``time``.
        """
        doc = self._json(SPOT_INSTANCE_ACTION, optional=True)
        if doc is MISSING:
            return None
        if not isinstance(doc, dict):
            raise ImdsBadAnswer(SPOT_INSTANCE_ACTION, f"a JSON {type(doc).__name__}, not an object")
        action = doc.get("action")
        if action not in SPOT_ACTIONS:
            raise ImdsBadAnswer(SPOT_INSTANCE_ACTION, "action is not one of terminate, stop, hibernate")
        return SpotAction(str(action), parse_rfc3339(SPOT_INSTANCE_ACTION, "time", doc.get("time")))

    def rebalance_recommendation(self) -> RebalanceRecommendation | None:
        """``meta-data/events/recommendations/rebalance``: None (404) until EC2 recommends it.

        Raises:
            ImdsBadAnswer: not a JSON object with an RFC 3339 ``noticeTime``.
        """
        doc = self._json(REBALANCE, optional=True)
        if doc is MISSING:
            return None
        if not isinstance(doc, dict):
            raise ImdsBadAnswer(REBALANCE, f"a JSON {type(doc).__name__}, not an object")
        return RebalanceRecommendation(parse_rfc3339(REBALANCE, "noticeTime", doc.get("noticeTime")))

    def scheduled_events(self) -> list[ScheduledEvent]:
        """``meta-data/events/maintenance/scheduled``: the events (empty when none or 404).

        Raises:
            ImdsBadAnswer: not a JSON list of objects, each with string ``EventId`` and ``Code``.
        """
        doc = self._json(SCHEDULED_EVENTS, optional=True)
        if doc is MISSING:
            return []
        if not isinstance(doc, list):
            raise ImdsBadAnswer(SCHEDULED_EVENTS, f"a JSON {type(doc).__name__}, not a list")
        events = []
        for entry in doc:
            if not isinstance(entry, dict):
                raise ImdsBadAnswer(SCHEDULED_EVENTS, f"an entry is a JSON {type(entry).__name__}, not an object")
            events.append(ScheduledEvent(
                event_id=_string(SCHEDULED_EVENTS, entry, "EventId"),
                code=_string(SCHEDULED_EVENTS, entry, "Code"),
                state=_string(SCHEDULED_EVENTS, entry, "State", required=False) or "active",
                not_before=_string(SCHEDULED_EVENTS, entry, "NotBefore", required=False),
                description=_string(SCHEDULED_EVENTS, entry, "Description", required=False, max_len=4096),
            ))
        return events
