"""IAM policy enforcement for the sandbox region: each instance's calls checked against its role.

On AWS an instance signs with its instance profile's role and IAM evaluates the role's policies
on every call. The sandbox region does the same for every call an instance signs (the region
knows the instance by its access key id, see :meth:`Region.caller_of`), once a policy is attached
to the instance or to its Auto Scaling group (:meth:`Region.attach_policy`). Calls of the operator
and of instances without a policy are not checked.

The evaluation follows the IAM policy evaluation logic (docs.aws.amazon.com/IAM/latest/UserGuide/
reference_policies_evaluation-logic.html) for identity policies alone: an explicit ``Deny`` wins,
otherwise some ``Allow`` must match; nothing matches means an implicit deny.

- ``Action``/``NotAction``: ``service:Action`` with ``*`` and ``?`` wildcards, case-insensitive;
- ``Resource``/``NotResource``: ARNs with ``*`` and ``?`` wildcards, case-sensitive; every resource
  of the request must be covered;
- ``Condition``: ``StringEquals``, ``StringNotEquals``, ``StringLike``, ``StringNotLike``,
  ``ArnEquals``, ``ArnLike``, ``Bool``, each with an ``...IfExists`` form; keys case-insensitive;
  several values of one key are ORed, several keys and operators ANDed; a missing key fails the
  condition (except ``IfExists``). Any other operator raises :class:`PolicyError` (fail closed).

The resources and condition keys of a request come from the service authorization reference
(docs.aws.amazon.com/service-authorization/latest/reference/): for the actions whose ARN AWS
checks, the ARN of what the request names; ``*`` for the actions that accept only ``*``
(``ec2:DescribeInstances``, ``autoscaling:Describe*``...). Context: ``aws:RequestedRegion``, and
``autoscaling:ResourceTag/<key>`` from the group's tags for group-scoped Auto Scaling actions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any


class PolicyError(ValueError):
    """A policy uses something this evaluator does not implement (it refuses rather than guesses)."""


@dataclass(frozen=True)
class AuthzRequest:
    """One call as IAM sees it.

    Attributes:
        action: ``service:Action`` (``ssm:GetParameter``).
        resources: the ARNs the call acts on (``("*",)`` for actions without resource types).
        context: condition keys → values (``aws:RequestedRegion``, ``autoscaling:ResourceTag/K``...).
    """

    action: str
    resources: tuple[str, ...] = ("*",)
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """The outcome: ``allowed``, and the ``Sid`` (or index) of the statements that decided it."""

    allowed: bool
    statements: tuple[str, ...] = ()


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


@lru_cache(maxsize=4096)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def wildcard_match(glob: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: ``*`` any run of characters, ``?`` one character."""
    return _pattern(glob, ignore_case).match(value) is not None


_OPERATORS = frozenset({"StringEquals", "StringNotEquals", "StringLike", "StringNotLike", "ArnEquals", "ArnLike",
                        "Bool"})


def _condition_holds(operator: str, key: str, wanted: list[Any], context: dict[str, str]) -> bool:
    if_exists = operator.endswith("IfExists")
    base = operator[: -len("IfExists")] if if_exists else operator
    if base not in _OPERATORS:
        raise PolicyError(f"condition operator {operator} is not implemented by the sandbox's IAM evaluator")
    lowered = {k.lower(): v for k, v in context.items()}
    if key.lower() not in lowered:
        return if_exists
    value = lowered[key.lower()]
    values = [str(w).lower() if isinstance(w, bool) else str(w) for w in wanted]
    if base in ("StringEquals", "ArnEquals"):
        return value in values
    if base == "StringNotEquals":
        return value not in values
    if base in ("StringLike", "ArnLike"):
        return any(wildcard_match(w, value) for w in values)
    if base == "StringNotLike":
        return not any(wildcard_match(w, value) for w in values)
    return value.lower() in [v.lower() for v in values]  # Bool


def _statement_matches(stmt: dict[str, Any], req: AuthzRequest) -> bool:
    if "Action" in stmt:
        if not any(wildcard_match(a, req.action, ignore_case=True) for a in _listify(stmt["Action"])):
            return False
    elif "NotAction" in stmt:
        if any(wildcard_match(a, req.action, ignore_case=True) for a in _listify(stmt["NotAction"])):
            return False
    else:
        raise PolicyError(f"statement {stmt.get('Sid', '?')} has neither Action nor NotAction")
    if "Resource" in stmt:
        patterns = _listify(stmt["Resource"])
        if not all(any(wildcard_match(p, r) for p in patterns) for r in req.resources):
            return False
    elif "NotResource" in stmt:
        patterns = _listify(stmt["NotResource"])
        if any(any(wildcard_match(p, r) for p in patterns) for r in req.resources):
            return False
    else:
        raise PolicyError(f"statement {stmt.get('Sid', '?')} has neither Resource nor NotResource")
    for operator, keys in (stmt.get("Condition") or {}).items():
        for key, wanted in keys.items():
            if not _condition_holds(operator, key, _listify(wanted), req.context):
                return False
    return True


def evaluate(policies: Iterable[dict[str, Any]], req: AuthzRequest) -> Decision:
    """Decide one request against identity policies (policy documents as parsed JSON)."""
    allows: list[str] = []
    for policy in policies:
        for i, stmt in enumerate(_listify(policy.get("Statement"))):
            if not _statement_matches(stmt, req):
                continue
            sid = str(stmt.get("Sid") or i)
            if stmt.get("Effect") == "Deny":
                return Decision(False, (sid,))
            if stmt.get("Effect") == "Allow":
                allows.append(sid)
    return Decision(bool(allows), tuple(allows))


# --- what a request acts on --------------------------------------------------------------------------
def _ssm_arn(region: str, account: str, name: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


def request_of(
    service: str,
    action: str,
    params: dict[str, Any],
    *,
    region: str,
    account: str,
    group: Callable[[str], tuple[str, dict[str, str]] | None],
    secret_arn: Callable[[str], str | None],
) -> AuthzRequest:
    """The :class:`AuthzRequest` of one call (see the module docstring for the sources).

    Args:
        service, action: the signing name and the API action.
        params: the request parameters (flattened Query parameters or the JSON body).
        group: group name → (group ARN, tags), or None when there is no such group.
        secret_arn: secret id or name → its ARN, or None when it does not exist (yet).
    """
    context = {"aws:RequestedRegion": region}
    resources: list[str] = []
    if service == "autoscaling" and action in ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat",
                                               "PutLifecycleHook", "SetDesiredCapacity", "UpdateAutoScalingGroup",
                                               "TerminateInstanceInAutoScalingGroup", "SetInstanceHealth"):
        name = str(params.get("AutoScalingGroupName") or "")
        found = group(name) if name else None
        if found is not None:
            arn, tags = found
            resources.append(arn)
            context.update({f"autoscaling:ResourceTag/{k}": v for k, v in tags.items()})
        else:
            resources.append(f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{name}")
    elif service == "ssm":
        names = [params[k] for k in ("Name", "Path") if isinstance(params.get(k), str)]
        names += [n for n in _listify(params.get("Names")) if isinstance(n, str)]
        resources += [_ssm_arn(region, account, n) for n in names]
    elif service == "secretsmanager":
        ident = params.get("SecretId") or params.get("Name")
        if isinstance(ident, str) and ident:
            resources.append(ident if ident.startswith("arn:") else
                             (secret_arn(ident) or f"arn:aws:secretsmanager:{region}:{account}:secret:{ident}-??????"))
    return AuthzRequest(f"{service}:{action}", tuple(resources) or ("*",), context)


def render(document: str, values: dict[str, str]) -> str:
    """Fill ``${Name}`` placeholders of a policy file (the CloudFormation ``Fn::Sub`` syntax).

    Raises:
        PolicyError: a placeholder has no value.
    """
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise PolicyError(f"no value for ${{{m.group(1)}}}")
        return values[m.group(1)]

    return re.sub(r"\$\{([A-Za-z0-9:]+)\}", sub, document)


POLICY_DIR = Path(__file__).resolve().parents[2] / "ami" / "iam"
POLICY_FILES = {"control-plane": "control-plane.json", "node": "worker.json"}


def agent_token_name(cluster: str) -> str:
    """The parameter (or secret) name a worker reads its join token from, without the leading ``/``:
    the agent's ``token.agent_name`` default where it has one, else its ``token.name`` default."""
    from herd_agent.config.schema import SCHEMA  # the agent's documented default, not its logic

    options = SCHEMA.by_path()
    default = (options["token.agent_name"] if "token.agent_name" in options else options["token.name"]).default
    return str(default).replace("{cluster}", cluster).lstrip("/")


def shipped_policy(role: str, *, region: str, account: str, cluster: str) -> dict[str, Any] | None:
    """The role's policy from ``ami/iam`` rendered for one cluster, or None outside a checkout."""
    path = POLICY_DIR / POLICY_FILES.get(role, "")
    if role not in POLICY_FILES or not path.is_file():
        return None
    values = {"AWS::Region": region, "AWS::AccountId": account, "ClusterName": cluster,
              "AgentToken": agent_token_name(cluster)}
    return json.loads(render(path.read_text(), values))
