"""Typed etcd errors: the gateway's error answers, and the membership steps' own failures.

The v3 JSON gateway answers an error as ``{"error", "code", "message"}`` where ``code`` is the
gRPC status code (google.rpc.Code) and ``message`` etcd's own text (e.g. ``etcdserver: unhealthy
cluster``, from etcd's ``server/etcdserver/api/v3rpc/rpctypes``); :func:`error_from_body` maps
the message to one class below. Each class carries its exit code (``herd_agent.errors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herd_agent.errors import ExitCode, HerdError

if TYPE_CHECKING:  # quorum imports the client, which imports this module
    from herd_agent.etcd.quorum import Verdict

# gRPC status codes (google.rpc.Code) the gateway puts in "code".
GRPC_NOT_FOUND = 5
GRPC_ALREADY_EXISTS = 6
GRPC_FAILED_PRECONDITION = 9
GRPC_UNAVAILABLE = 14


class EtcdError(HerdError):
    """An etcd call failed.

    Attributes:
        code: the gRPC status code from the gateway's JSON body (None for transport errors).
        etcd_message: etcd's own message, e.g. ``etcdserver: unhealthy cluster``.
        endpoint: the client URL that answered (or failed).
    """

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, message: str, *, code: int | None = None, etcd_message: str = "", endpoint: str = ""):
        super().__init__(message)
        self.code = code
        self.etcd_message = etcd_message
        self.endpoint = endpoint


class EtcdUnreachable(EtcdError):
    """No endpoint answered (connection refused, timeout, TLS failure)."""


class UnhealthyCluster(EtcdError):
    """``etcdserver: unhealthy cluster`` (gRPC 14): reconfiguration refused until every voter has been
    connected for etcd's health interval (5 s); transient, retried."""

    exit_code = ExitCode.TEMP_FAIL


class TooManyLearners(EtcdError):
    """``etcdserver: too many learner members in cluster`` (gRPC 9): etcd allows one learner; retried."""

    exit_code = ExitCode.TEMP_FAIL


class LearnerNotInSync(EtcdError):
    """``can only promote a learner member which is in sync with leader`` (gRPC 9); retried."""

    exit_code = ExitCode.TEMP_FAIL


class NotEnoughStartedMembers(EtcdError):
    """``re-configuration failed due to not enough started members`` (gRPC 9)."""

    exit_code = ExitCode.TEMP_FAIL


class MemberNotFound(EtcdError):
    """``etcdserver: member not found`` (gRPC 5)."""


class MemberIDRemoved(EtcdError):
    """``etcdserver: ID removed`` (gRPC 9): the member ID belongs to a removed member."""


class PeerURLExists(EtcdError):
    """``etcdserver: Peer URLs already exists`` (gRPC 9): a member already has that peer URL."""


class MemberNotLearner(EtcdError):
    """``can only promote a learner member`` (gRPC 9): the member is already a voter."""


class BadLeaderTransferee(EtcdError):
    """``etcdserver: bad leader transferee`` (gRPC 9): the target is unknown, a learner or down."""


class NotLeader(EtcdError):
    """``etcdserver: not leader`` (gRPC 14): transfer-leadership was sent to a follower."""


class LearnerEndpoint(EtcdError):
    """``etcdserver: rpc not supported for learner`` (gRPC 14): the endpoint is a learner, which
    serves no client requests but status; another endpoint must answer."""


# (message fragment, class); the first fragment found in etcd's message wins.
_BY_MESSAGE: tuple[tuple[str, type[EtcdError]], ...] = (
    ("unhealthy cluster", UnhealthyCluster),
    ("too many learner members", TooManyLearners),
    ("in sync with leader", LearnerNotInSync),
    ("not enough started members", NotEnoughStartedMembers),
    ("member not found", MemberNotFound),
    ("id removed", MemberIDRemoved),
    ("peer urls already exists", PeerURLExists),
    ("can only promote a learner member", MemberNotLearner),
    ("bad leader transferee", BadLeaderTransferee),
    ("not leader", NotLeader),
    ("rpc not supported for learner", LearnerEndpoint),
)

RETRYABLE: tuple[type[EtcdError], ...] = (UnhealthyCluster, TooManyLearners, LearnerNotInSync,
                                          NotEnoughStartedMembers)


def error_from_body(status: int, body: Any, endpoint: str) -> EtcdError:
    """Map a gateway error answer to a typed :class:`EtcdError`.

    Args:
        status: the HTTP status (400, 404, 503, ...).
        body: the decoded JSON body ``{"error", "code", "message"}`` (or anything else).
        endpoint: the client URL that answered.
    """
    code: int | None = None
    message = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # streaming methods wrap it: {"error": {"grpc_code", "message"}}
            code = err.get("grpc_code", err.get("code"))
            message = str(err.get("message", ""))
        else:
            code = body.get("code")
            message = str(body.get("message") or err or "")
    if not message:
        message = f"HTTP {status}"
    lowered = message.lower()
    cls: type[EtcdError] = EtcdError
    for fragment, candidate in _BY_MESSAGE:
        if fragment in lowered:
            cls = candidate
            break
    return cls(f"etcd at {endpoint}: {message} (grpc code {code})", code=code, etcd_message=message,
               endpoint=endpoint)


# --- the membership steps' own failures ----------------------------------------------------------


class MembershipError(HerdError):
    """A membership step could not be completed."""

    exit_code = ExitCode.FAILURE


class QuorumRefused(MembershipError):
    """Removing the member would break quorum; nothing was changed.

    Attributes:
        verdict: the proof that failed.
    """

    exit_code = ExitCode.TEMP_FAIL

    def __init__(self, message: str, verdict: Verdict) -> None:
        super().__init__(message)
        self.verdict = verdict


class WaitTimeout(MembershipError):
    """A bounded wait ran out (catch-up, leadership move, removal confirmation)."""

    exit_code = ExitCode.TIMEOUT


class CloudTruthUnavailable(HerdError):
    """The instance oracle failed (EC2 throttled, unreachable, access denied): no stale decision."""

    exit_code = ExitCode.UNAVAILABLE
