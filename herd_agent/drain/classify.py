"""What to do with each pod on a draining node. Pure functions over pod manifests (dicts).

Rules follow ``kubectl drain`` (Kubernetes "Safely Drain a Node"): DaemonSet-owned pods stay
(their controller ignores unschedulable and would recreate them), mirror pods of static pods stay
(the API cannot delete them for real), pods already terminating are only waited for, finished pods
are deleted, pods with emptyDir volumes and pods no controller will recreate follow the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


class Disposition(StrEnum):
    """What happens to a pod."""

    EVICT = "evict"
    DELETE = "delete"  # finished (Succeeded/Failed): nothing to protect
    WAIT = "wait"  # already terminating
    SKIP_DAEMONSET = "skip-daemonset"
    SKIP_MIRROR = "skip-mirror"
    BLOCK_EMPTYDIR = "blocked-emptydir"
    BLOCK_UNMANAGED = "blocked-unmanaged"


@dataclass(frozen=True)
class Verdict:
    """A pod's disposition and, for blocks and skips, why."""

    disposition: Disposition
    reason: str = ""


def key(pod: dict[str, Any]) -> str:
    """``namespace/name`` of a pod manifest."""
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', 'default')}/{meta.get('name')}"


def controller_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with ``controller: true``, or None."""
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def classify(pod: dict[str, Any], *, delete_emptydir_data: bool, evict_unmanaged: bool) -> Verdict:
    """Decide a pod's fate.

    Args:
        pod: the pod manifest (``metadata``, ``spec``, ``status``).
        delete_emptydir_data: evict pods with emptyDir volumes (their data is lost).
        evict_unmanaged: evict pods that no controller will recreate.
    """
    meta = pod.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return Verdict(Disposition.WAIT, "already terminating")
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return Verdict(Disposition.SKIP_MIRROR, "mirror pod of a static pod")
    owner = controller_of(pod)
    if owner and owner.get("kind") == "DaemonSet":
        return Verdict(Disposition.SKIP_DAEMONSET, f"managed by DaemonSet {owner.get('name')}")
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return Verdict(Disposition.DELETE, f"finished ({pod['status']['phase']})")
    if owner is None and not evict_unmanaged:
        return Verdict(Disposition.BLOCK_UNMANAGED, "no controller would recreate it (leave.evict_unmanaged=false)")
    empty_dirs = [v.get("name") for v in pod.get("spec", {}).get("volumes") or [] if "emptyDir" in v]
    if empty_dirs and not delete_emptydir_data:
        return Verdict(Disposition.BLOCK_EMPTYDIR,
                       f"emptyDir volume(s) {', '.join(map(str, empty_dirs))} would be lost "
                       "(leave.delete_emptydir_data=false)")
    return Verdict(Disposition.EVICT)


def grace_period(pod: dict[str, Any]) -> int:
    """The pod's ``terminationGracePeriodSeconds`` (Kubernetes default 30)."""
    value = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    return 30 if value is None else int(value)
