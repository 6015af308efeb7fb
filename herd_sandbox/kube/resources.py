"""The table of resource types the emulated API server serves.

Every behaviour of the server (routing, discovery, storage, RBAC resource names, Table output)
is driven by :class:`ResourceType` rows, not by per-kind code. The built-in rows mirror the
Kubernetes API reference (https://kubernetes.io/docs/reference/kubernetes-api/); custom
resources get rows at run time when a CustomResourceDefinition is Established.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

ALL_VERBS: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Subresource:
    """A subresource such as ``pods/eviction``.

    Args:
        name: the path segment after the object name (``status``, ``scale``, ``eviction``, ``token``).
        kind: the kind posted or returned (``Eviction``, ``Scale``, ``TokenRequest``; the parent kind for status).
        group/version: the API group and version of ``kind`` when it differs from the parent's
            (discovery reports them, as the real server does for ``pods/eviction``).
        verbs: the verbs discovery lists for it.
    """

    name: str
    kind: str = ""
    group: str | None = None
    version: str | None = None
    verbs: tuple[str, ...] = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and how discovery describes it.

    Args:
        group: API group, ``""`` for the core group.
        version: served version (one per row; a CRD with two served versions gives two rows).
        kind: object kind, e.g. ``Pod``; lists are ``<kind>List``.
        plural: the URL resource name, e.g. ``pods``.
        namespaced: True when objects live in a namespace.
        short_names: kubectl short names (``po``, ``no``).
        subresources: the subresources served for this type.
        verbs: the verbs served on the main resource.
        field_selectors: field paths that ``fieldSelector`` may use besides ``metadata.name``
            and ``metadata.namespace`` (the real server also limits them per type).
        categories: discovery categories (``all``).
        printer_columns: extra Table columns as (name, type, JSON path) beyond Name and Age.
        storage_group: the group whose ``v1`` row stores these objects when another group's
            row does (events.k8s.io Events are stored as core v1 Events; see convert.py).
    """

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[Subresource, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    field_selectors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[tuple[str, str, str], ...] = ()
    storage_group: str | None = None

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, else ``<group>/<version>``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        """The kind of list responses, ``<Kind>List``."""
        return f"{self.kind}List"

    @property
    def singular(self) -> str:
        """The lower-case kind, as discovery reports ``singularName``."""
        return self.kind.lower()

    @property
    def key(self) -> tuple[str, str]:
        """Storage key of the type: objects are shared by every version of (group, plural)."""
        return (self.group if self.storage_group is None else self.storage_group, self.plural)

    def subresource(self, name: str) -> Subresource | None:
        """The subresource called ``name`` or None."""
        for sub in self.subresources:
            if sub.name == name:
                return sub
        return None


STATUS = Subresource("status")
SCALE = Subresource("scale", kind="Scale", group="autoscaling", version="v1")


def _builtin() -> list[ResourceType]:
    rt = ResourceType
    return [
        rt("", "v1", "Namespace", "namespaces", False, ("ns",), (STATUS,),
           field_selectors=("status.phase",), printer_columns=(("Status", "string", "status.phase"),)),
        rt("", "v1", "Node", "nodes", False, ("no",), (STATUS,), field_selectors=("spec.unschedulable",)),
        rt("", "v1", "Pod", "pods", True, ("po",),
           (STATUS, Subresource("eviction", "Eviction", "policy", "v1", ("create",)),
            Subresource("binding", "Binding", verbs=("create",))),
           field_selectors=("spec.nodeName", "status.phase", "spec.restartPolicy", "spec.schedulerName",
                            "spec.serviceAccountName", "status.podIP", "status.nominatedNodeName"),
           categories=("all",)),
        rt("", "v1", "Secret", "secrets", True, field_selectors=("type",),
           printer_columns=(("Type", "string", "type"),)),
        rt("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
        rt("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",),
           (Subresource("token", "TokenRequest", "authentication.k8s.io", "v1", ("create",)),)),
        rt("", "v1", "Service", "services", True, ("svc",), (STATUS,), categories=("all",)),
        rt("", "v1", "Endpoints", "endpoints", True, ("ep",)),
        rt("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True),
        rt("", "v1", "Event", "events", True, ("ev",),
           field_selectors=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                            "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                            "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")),
        rt("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",), (STATUS,)),
        rt("events.k8s.io", "v1", "Event", "events", True, ("ev",),
           field_selectors=("regarding.kind", "regarding.name", "regarding.namespace", "regarding.uid",
                            "reason", "reportingController", "type"), storage_group=""),
        rt("coordination.k8s.io", "v1", "Lease", "leases", True,
           printer_columns=(("Holder", "string", "spec.holderIdentity"),)),
        rt("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, ("pdb",), (STATUS,),
           printer_columns=(("Allowed Disruptions", "integer", "status.disruptionsAllowed"),)),
        rt("apps", "v1", "Deployment", "deployments", True, ("deploy",), (STATUS, SCALE), categories=("all",),
           printer_columns=(("Ready", "integer", "status.readyReplicas"),
                            ("Up-to-date", "integer", "status.updatedReplicas"),
                            ("Available", "integer", "status.availableReplicas"))),
        rt("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",), (STATUS, SCALE), categories=("all",),
           printer_columns=(("Desired", "integer", "spec.replicas"), ("Current", "integer", "status.replicas"),
                            ("Ready", "integer", "status.readyReplicas"))),
        rt("apps", "v1", "DaemonSet", "daemonsets", True, ("ds",), (STATUS,), categories=("all",),
           printer_columns=(("Desired", "integer", "status.desiredNumberScheduled"),
                            ("Ready", "integer", "status.numberReady"))),
        rt("apps", "v1", "StatefulSet", "statefulsets", True, ("sts",), (STATUS, SCALE), categories=("all",),
           printer_columns=(("Ready", "integer", "status.readyReplicas"),)),
        rt("apps", "v1", "ControllerRevision", "controllerrevisions", True),
        rt("batch", "v1", "Job", "jobs", True, (), (STATUS,), categories=("all",)),
        rt("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration",
           "validatingwebhookconfigurations", False),
        rt("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations",
           False),
        rt("apiregistration.k8s.io", "v1", "APIService", "apiservices", False, (), (STATUS,)),
        rt("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False,
           ("crd", "crds"), (STATUS,)),
        # Virtual: a create is answered, nothing is stored (server.py).
        rt("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", False,
           verbs=("create",)),
        rt("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
        rt("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
        rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
        rt("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    ]


# Groups of the built-in types (strategic merge patch applies to them only).
BUILTIN_GROUPS = frozenset(row.group for row in _builtin())

# Groups whose preferred version discovery reports, in the order the real server lists them.
GROUP_ORDER = ("", "apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "batch", "policy",
               "rbac.authorization.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io",
               "apiregistration.k8s.io", "coordination.k8s.io", "discovery.k8s.io")


class Registry:
    """The live table: built-in rows plus rows added for Established CRDs. Thread-safe.

    Lookups are by (group, version, plural); :meth:`by_kind` maps (group, kind) for controllers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_rows: dict[str, list[ResourceType]] = {}
        for row in _builtin():
            self._types[(row.group, row.version, row.plural)] = row

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The row served at ``/apis/<group>/<version>/<plural>`` (``/api/v1`` when group is ``""``)."""
        with self._lock:
            return self._types.get((group, version, plural))

    def by_kind(self, group: str, kind: str) -> ResourceType | None:
        """The first row for (group, kind), any version."""
        with self._lock:
            for row in self._types.values():
                if row.group == group and row.kind == kind:
                    return row
        return None

    def storage_type(self, rtype: ResourceType) -> ResourceType:
        """The row whose form objects of ``rtype`` are stored in (``rtype`` itself for most types)."""
        if rtype.storage_group is None:
            return rtype
        return self.get(rtype.storage_group, "v1", rtype.plural) or rtype

    def for_key(self, key: tuple[str, str]) -> ResourceType | None:
        """A row (any version) for a storage key (group, plural)."""
        with self._lock:
            for row in self._types.values():
                if row.key == key:
                    return row
        return None

    def all(self) -> list[ResourceType]:
        """Every served row."""
        with self._lock:
            return list(self._types.values())

    def groups(self) -> dict[str, list[str]]:
        """Served versions per group, groups in discovery order (core group first)."""
        rows = self.all()
        seen: dict[str, list[str]] = {}
        for row in rows:
            versions = seen.setdefault(row.group, [])
            if row.version not in versions:
                versions.append(row.version)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        groups = sorted(seen, key=lambda g: (order.get(g, len(order)), g))
        return {g: seen[g] for g in groups}

    def set_crd(self, crd_name: str, rows: list[ResourceType]) -> None:
        """Serve ``rows`` for the CRD ``crd_name`` (replacing its earlier rows); empty rows unserve it."""
        with self._lock:
            for row in self._crd_rows.pop(crd_name, []):
                self._types.pop((row.group, row.version, row.plural), None)
            for row in rows:
                self._types[(row.group, row.version, row.plural)] = row
            if rows:
                self._crd_rows[crd_name] = rows


def rows_for_crd(crd: dict) -> list[ResourceType]:
    """Resource rows for an apiextensions.k8s.io/v1 CustomResourceDefinition object.

    One row per served version; the ``status`` and ``scale`` subresources are served when the
    version declares them (``spec.versions[].subresources``).
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    rows = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subs: list[Subresource] = []
        declared = version.get("subresources") or {}
        if "status" in declared:
            subs.append(STATUS)
        if "scale" in declared:
            subs.append(SCALE)
        columns = tuple(
            (c.get("name", ""), c.get("type", "string"), str(c.get("jsonPath", "")).lstrip("."))
            for c in version.get("additionalPrinterColumns") or []
        )
        rows.append(
            ResourceType(
                group=spec.get("group", ""),
                version=version.get("name", "v1"),
                kind=names.get("kind", ""),
                plural=names.get("plural", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                subresources=tuple(subs),
                categories=tuple(names.get("categories") or ()),
                printer_columns=columns,
            )
        )
    return rows
