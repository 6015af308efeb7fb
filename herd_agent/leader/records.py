"""Helm's release records as the API holds them: Secrets of type ``helm.sh/release.v1`` labelled
``owner=helm``, ``name=<release>``, ``status``, ``version`` (Helm's default "secret" storage driver,
Helm 3 and 4), plus the labels we add with ``--labels`` (epoch, values hash). Read through the
Kubernetes API, so one list answers for every release of a namespace without a helm process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HASH_LABEL = "herd.io/values-hash"


@dataclass(frozen=True)
class Record:
    """One revision's record: ``status`` (deployed, pending-upgrade, ...), ``revision``, its labels,
    and ``created`` (the Secret's creationTimestamp, RFC 3339)."""

    name: str
    namespace: str
    revision: int
    status: str
    labels: dict[str, str] = field(default_factory=dict)
    created: str | None = None


def records(kube: Any, namespace: str, name: str | None = None) -> list[Record]:
    """Every revision's record in ``namespace`` (of release ``name`` when given), oldest first."""
    from lightkube.resources.core_v1 import Secret

    selector: dict[str, str] = {"owner": "helm"}
    if name:
        selector["name"] = name
    out = []
    for s in kube.list(Secret, namespace=namespace, labels=selector):
        labels = dict(s.metadata.labels or {})
        try:
            revision = int(labels.get("version", "0"))
        except ValueError:
            continue
        created = s.metadata.creationTimestamp
        out.append(Record(labels.get("name", ""), namespace, revision, labels.get("status", "unknown"), labels,
                          created.isoformat() if hasattr(created, "isoformat") else created))
    return sorted(out, key=lambda r: (r.name, r.revision))


def latest(kube: Any, namespace: str, name: str) -> Record | None:
    """The newest revision's record of release ``namespace/name`` (None: never installed)."""
    revs = records(kube, namespace, name)
    return revs[-1] if revs else None
