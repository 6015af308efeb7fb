"""Authentication (bearer tokens, client certificates) and RBAC authorization.

Authentication mirrors kube-apiserver's static-token and x509 authenticators
(https://kubernetes.io/docs/reference/access-authn-authz/authentication/): a bearer token maps
to one identity; a client certificate maps CN → user and O → groups. ServiceAccount identities
are ``system:serviceaccount:<ns>:<name>`` with groups ``system:serviceaccounts`` and
``system:serviceaccounts:<ns>``. Every authenticated identity is also in
``system:authenticated``.

Authorization mirrors the RBAC authorizer
(https://kubernetes.io/docs/reference/access-authn-authz/rbac/): a request is allowed when a
rule of a Role/ClusterRole bound to the user (by User, Group or ServiceAccount subject) matches
its verb, API group, resource (``pods/eviction`` for subresources, ``*``, ``*/scale``) and
resourceNames. Enforcement is opt-in per identity; members of ``system:masters`` always pass.
Aggregated ClusterRoles (``aggregationRule``) are not evaluated.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.resources import ResourceType
from herd_sandbox.kube.store import Store

RBAC = "rbac.authorization.k8s.io"


@dataclass
class Identity:
    """Who a request runs as.

    Args:
        name: user name (``admin``, ``system:serviceaccount:kube-system:herd-agent``).
        groups: group names (``system:masters`` bypasses RBAC).
        enforce_rbac: evaluate RBAC for this identity (False: everything is allowed).
        token: its bearer token, when it authenticates with one.
        cert_pem/key_pem: its client certificate and key, when it authenticates with one.
    """

    name: str
    groups: list[str] = field(default_factory=list)
    enforce_rbac: bool = False
    token: str | None = field(default=None, repr=False)  # never in a repr, so never in a log line
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)

    @property
    def all_groups(self) -> list[str]:
        """Its groups plus ``system:authenticated``."""
        return [*self.groups, "system:authenticated"]


def service_account_user(namespace: str, name: str) -> tuple[str, list[str]]:
    """(user name, groups) of a ServiceAccount, as the token authenticator reports them."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    return f"system:serviceaccount:{namespace}:{name}", groups


class Authenticator:
    """Token and certificate-subject lookup. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_token: dict[str, Identity] = {}
        self._by_name: dict[str, Identity] = {}

    def add(self, identity: Identity) -> Identity:
        """Register ``identity`` (its token, if any, becomes valid)."""
        with self._lock:
            self._by_name[identity.name] = identity
            if identity.token:
                self._by_token[identity.token] = identity
        return identity

    def issue_token(self, identity: Identity) -> str:
        """A new random bearer token for ``identity`` (registered; returned once, never logged)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_token[token] = identity
            self._by_name.setdefault(identity.name, identity)
        return token

    def by_name(self, name: str) -> Identity | None:
        """The registered identity called ``name``."""
        with self._lock:
            return self._by_name.get(name)

    def from_token(self, token: str) -> Identity | None:
        """The identity for a bearer token, or None."""
        with self._lock:
            return self._by_token.get(token)

    def from_cert_subject(self, subject: tuple[Any, ...]) -> Identity | None:
        """The identity for a verified peer certificate subject (``ssl`` ``getpeercert()['subject']``).

        CN is the user, each O a group; a subject whose user was registered takes that
        identity's RBAC setting, an unknown one is enforced.
        """
        user, groups = None, []
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    user = value
                elif key == "organizationName":
                    groups.append(value)
        if not user:
            return None
        known = self.by_name(user)
        enforce = known.enforce_rbac if known else True
        return Identity(user, groups, enforce_rbac=enforce)


@dataclass(frozen=True)
class Request:
    """The RBAC attributes of one request (k8s.io/apiserver ``authorizer.Attributes``)."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def resource_request(self) -> bool:
        """True for a request on an API resource (False for /version, /api discovery...)."""
        return bool(self.resource)


def _subject_matches(subject: dict[str, Any], user: str, groups: list[str], binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user
    if kind == "Group":
        return subject.get("name") in groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def rule_allows(rule: dict[str, Any], req: Request) -> bool:
    """Whether one PolicyRule covers the request (verbs, apiGroups, resources, resourceNames, nonResourceURLs)."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and req.verb not in verbs:
        return False
    if not req.resource_request:
        urls = rule.get("nonResourceURLs") or []
        return any(u == "*" or u == req.path or (u.endswith("*") and req.path.startswith(u[:-1])) for u in urls)
    groups = rule.get("apiGroups") or []
    if "*" not in groups and req.group not in groups:
        return False
    wanted = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    resources = rule.get("resources") or []
    ok = False
    for r in resources:
        if r == "*" or r == wanted:
            ok = True
        elif req.subresource and r == f"*/{req.subresource}":
            ok = True
        elif r == f"{req.resource}/*" and req.subresource:
            ok = True
    if not ok:
        return False
    names = rule.get("resourceNames") or []
    return not names or req.name in names


class Authorizer:
    """RBAC over the Roles and bindings in the store.

    Args:
        store: where Role, ClusterRole, RoleBinding and ClusterRoleBinding objects live.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def _rtype(self, kind: str) -> ResourceType:
        rtype = self._store.registry.by_kind(RBAC, kind)
        assert rtype is not None
        return rtype

    def _rules(self, user: str, groups: list[str], namespace: str) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        crb, _ = self._store.list_ref(self._rtype("ClusterRoleBinding"))
        bindings = [(b, "") for b in crb]
        if namespace:
            rb, _ = self._store.list_ref(self._rtype("RoleBinding"), namespace)
            bindings += [(b, namespace) for b in rb]
        for binding, ns in bindings:
            if not any(_subject_matches(s, user, groups, ns) for s in binding.get("subjects") or []):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                role = self._store.find(self._rtype("ClusterRole"), None, ref.get("name", ""))
            elif ref.get("kind") == "Role" and ns:
                role = self._store.find(self._rtype("Role"), ns, ref.get("name", ""))
            else:
                role = None
            if role:
                rules.extend(role.get("rules") or [])
        return rules

    def allowed(self, identity: Identity, req: Request) -> bool:
        """Whether ``identity`` may make ``req`` (True when RBAC is off for it or it is in system:masters)."""
        groups = identity.all_groups
        if not identity.enforce_rbac or "system:masters" in groups:
            return True
        if not req.resource_request and req.verb == "get":
            return True  # discovery and /version: system:discovery and system:public-info-viewer
        if req.verb == "create" and req.resource == "selfsubjectaccessreviews":
            return True  # system:basic-user
        return any(rule_allows(rule, req) for rule in self._rules(identity.name, groups, req.namespace))

    def check(self, identity: Identity, req: Request) -> None:
        """Raise 403 Forbidden, worded as the real RBAC denial, unless allowed."""
        if self.allowed(identity, req):
            return
        if not req.resource_request:
            raise ApiError(403, "Forbidden", f'forbidden: User "{identity.name}" cannot {req.verb} path "{req.path}"',
                           {})
        qualified = f"{req.resource}.{req.group}" if req.group else req.resource
        target = f'{qualified} "{req.name}"' if req.name else qualified
        resource = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
        scope = f'in the namespace "{req.namespace}"' if req.namespace else "at the cluster scope"
        raise ApiError(
            403, "Forbidden",
            f'{target} is forbidden: User "{identity.name}" cannot {req.verb} resource "{resource}" '
            f'in API group "{req.group}" {scope}',
            {"name": req.name, "group": req.group, "kind": req.resource} if req.name
            else {"group": req.group, "kind": req.resource},
        )
