"""The GitOps hand-off: the ``manifests`` list, applied after the releases with server-side apply.

Each object is applied with field manager ``herd-agent-leader`` and ``force=true`` (Kubernetes
"Server-Side Apply": the leader owns the fields it declares and takes them back from other
managers), annotated with the leader epoch, and fenced. Kinds from CRDs (e.g. Argo CD's
``argoproj.io/v1alpha1`` Application) are resolved by reading the cluster's CRDs first
(lightkube's ``load_in_cluster_generic_resources``), so the Argo CD release must be deployed and
its CRDs Established before the root Application is applied — which the release order ensures.
An Application with ``syncPolicy.automated`` then syncs its children with no person (Argo CD docs,
"Automated Sync Policy"; without it children stay OutOfSync).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from herd_agent.leader.fence import Fence

log = logging.getLogger(__name__)

FIELD_MANAGER = "herd-agent-leader"


def with_epoch(obj: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    """A copy of ``obj`` with ``annotations`` added to ``metadata.annotations``."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    return out


def describe(obj: dict[str, Any]) -> str:
    """``Kind namespace/name`` (or ``Kind name``)."""
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def apply_all(kube: Any, fence: Fence, manifests: Sequence[dict[str, Any]]) -> list[str]:
    """Server-side apply every object in order, each fenced; returns what was applied.

    Raises:
        Deposed: we lost the Lease (the rest is not applied).
        lightkube ApiError / LoadResourceError: the API refused an object, or its kind is unknown.
    """
    from lightkube import codecs
    from lightkube.generic_resource import load_in_cluster_generic_resources

    if not manifests:
        return []
    load_in_cluster_generic_resources(kube)
    done = []
    for raw in manifests:
        epoch = fence.check(f"apply {describe(raw)}")
        obj = codecs.from_dict(with_epoch(raw, fence.labels(epoch)))
        kube.apply(obj, field_manager=FIELD_MANAGER, force=True)
        done.append(describe(raw))
    return done
