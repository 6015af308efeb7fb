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

**KMS through SSM and Secrets Manager** (:func:`kms_request_of`). A SecureString parameter or a
secret encrypted under a *customer-managed* key can be written or read only when the caller's own
policy allows the KMS operation the service performs on that key for it, evaluated with
``kms:ViaService`` = ``<service>.<region>.amazonaws.com`` and ``kms:CallerAccount``:

- SSM ("How AWS Systems Manager Parameter Store uses AWS KMS", standard parameters):
  ``PutParameter`` of a ``SecureString`` → ``kms:Encrypt`` on its ``KeyId``; ``GetParameter`` /
  ``GetParameters`` ``WithDecryption`` of a ``SecureString`` → ``kms:Decrypt`` on the key it was
  stored with ("any principal that retrieves the decrypted value must have kms:Decrypt permission
  on that key").
- Secrets Manager ("Secret encryption and decryption in AWS Secrets Manager": envelope
  encryption, a new data key for every new value): ``CreateSecret`` with a value and
  ``PutSecretValue`` → ``kms:GenerateDataKey``; ``GetSecretValue`` → ``kms:Decrypt``.
- The AWS-managed keys (``aws/ssm``, ``aws/secretsmanager``) need no identity permission: their
  key policies allow every principal of the account through the service. The customer-managed
  key's policy is taken to delegate to IAM (the default key policy, which the example stack
  gives its key); key policies themselves are not evaluated. A key that does not exist refuses.
  ``GetParametersByPath`` with decryption is not modelled (the agent reads only plain Strings by path).

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


AWS_MANAGED_KEYS = {"ssm": "alias/aws/ssm", "secretsmanager": "alias/aws/secretsmanager"}


def kms_request_of(
    service: str,
    action: str,
    params: dict[str, Any],
    *,
    region: str,
    account: str,
    stored_keys: Callable[[], list[str | None]],
    key_arn: Callable[[str], tuple[str, bool] | None],
) -> AuthzRequest | None:
    """The KMS request the service makes on the caller's behalf for this call, or None when it
    makes none that needs the caller's permission (see the module docstring).

    Args:
        stored_keys: the KeyId / KmsKeyId of each SecureString parameter or secret the call reads
            or re-encrypts, as stored (None: not encrypted / does not exist).
        key_arn: any key id, key ARN, alias name or alias ARN → (key ARN, AWS-managed), or None
            when no such key exists.
    """
    via = {"kms:ViaService": f"{service}.{region}.amazonaws.com", "kms:CallerAccount": account,
           "aws:RequestedRegion": region}
    keys: list[str | None]
    if service == "ssm" and action == "PutParameter" and params.get("Type") == "SecureString":
        kms_action, keys = "kms:Encrypt", [str(params.get("KeyId") or AWS_MANAGED_KEYS["ssm"])]
    elif service == "ssm" and action in ("GetParameter", "GetParameters") and \
            str(params.get("WithDecryption")).lower() == "true":
        kms_action, keys = "kms:Decrypt", stored_keys()
    elif service == "secretsmanager" and action == "CreateSecret" and \
            (params.get("SecretString") is not None or params.get("SecretBinary") is not None):
        kms_action, keys = "kms:GenerateDataKey", [str(params.get("KmsKeyId") or AWS_MANAGED_KEYS[service])]
    elif service == "secretsmanager" and action == "PutSecretValue":
        kms_action, keys = "kms:GenerateDataKey", stored_keys()
    elif service == "secretsmanager" and action == "GetSecretValue":
        kms_action, keys = "kms:Decrypt", stored_keys()
    else:
        return None
    arns: list[str] = []
    for key in keys:
        if key is None:
            continue
        found = key_arn(key)
        if found is None:  # KMS NotFoundException: the call fails whoever makes it
            arns.append(f"arn:aws:kms:{region}:{account}:key/{key}")
        elif not found[1]:
            arns.append(found[0])
    return AuthzRequest(kms_action, tuple(dict.fromkeys(arns)), via) if arns else None


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


KMS_STATEMENTS = frozenset({"ClusterKey", "ClusterKeyDecrypt"})
"""The statements on the cluster's customer-managed key (``${KmsKeyArn}``)."""


def cluster_key_alias(cluster: str) -> str:
    """The alias of a cluster's customer-managed KMS key (the example stack's ``ClusterKeyAlias``)."""
    return f"alias/herd/{cluster}"


def shipped_policy(role: str, *, region: str, account: str, cluster: str,
                   kms_key_arn: str | None = None) -> dict[str, Any] | None:
    """The role's policy from ``ami/iam`` rendered for one cluster, or None outside a checkout.

    ``kms_key_arn``: the cluster's customer-managed key; None (a cluster on the AWS-managed keys)
    leaves the statements on it out, as ami/iam/README.md tells such a user to.
    """
    path = POLICY_DIR / POLICY_FILES.get(role, "")
    if role not in POLICY_FILES or not path.is_file():
        return None
    values = {"AWS::Region": region, "AWS::AccountId": account, "ClusterName": cluster,
              "AgentToken": agent_token_name(cluster), "KmsKeyArn": kms_key_arn or "none"}
    doc = json.loads(render(path.read_text(), values))
    if kms_key_arn is None:
        doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") not in KMS_STATEMENTS]
    return doc
