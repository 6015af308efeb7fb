"""Recovering releases stuck in ``pending-install``, ``pending-upgrade`` or ``pending-rollback``.

A pending release blocks every later helm operation on it ("another operation
(install/upgrade/rollback) is in progress"). Its helm process died: a killed leader, a reboot.
Flux unlocks any pending release at once (it assumes it is the only writer); k3s' helm-controller
marks it failed and, by default, uninstalls and reinstalls, which has destroyed data
(helm-controller #246, #110). We recover only what no live leader owns, in the least
destructive way:

- the owner is the epoch recorded on the pending revision (``herd.io/leader-epoch``). While we
  hold the Lease with epoch E, no other epoch is live; a pending revision of *our own* epoch is
  live only while our applier runs it (``in_flight``). A pending revision without our label
  (someone's manual helm) is left alone for ``foreign_grace_s`` after it was created;
- with a deployed revision before it: ``helm rollback`` to the newest deployed revision;
  revision 1 that never deployed: ``helm uninstall`` (nothing of it ever worked);
- fenced like every write; recorded (Event + status record) by the caller through ``report``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from herd_agent.leader.fence import EPOCH_LABEL, Fence
from herd_agent.leader.helm import PENDING, Helm
from herd_agent.leader.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """What was (or would be) done: ``action`` rollback/uninstall/skip, ``revision`` rolled back
    to, and ``why``."""

    release: str
    action: str
    revision: int | None
    why: str


def decide(revisions: list[Record], epoch: int, in_flight: Collection[str], *, now: datetime | None = None,
           foreign_grace_s: float = 300) -> Recovery | None:
    """Pure decision for one release from its records (oldest first); None when not pending."""
    if not revisions or revisions[-1].status not in PENDING:
        return None
    cur = revisions[-1]
    rid = f"{cur.namespace}/{cur.name}"
    owner = cur.labels.get(EPOCH_LABEL)
    if owner == str(epoch) and rid in in_flight:
        return Recovery(rid, "skip", None, f"{cur.status} revision {cur.revision} is ours and running")
    if owner is None:
        created = _parse(cur.created)
        age = ((now or datetime.now(UTC)) - created).total_seconds() if created else foreign_grace_s
        if age < foreign_grace_s:
            return Recovery(rid, "skip", None, f"{cur.status} revision {cur.revision} was not started by a leader "
                                               f"and is only {age:.0f} s old")
    deployed = [r.revision for r in revisions[:-1] if r.status in ("deployed", "superseded")]
    last_ok = [r.revision for r in revisions[:-1] if r.status == "deployed"] or deployed
    who = f"epoch {owner}" if owner is not None else "no leader"
    if last_ok:
        return Recovery(rid, "rollback", last_ok[-1],
                        f"{cur.status} revision {cur.revision} of {who} (not live); back to revision {last_ok[-1]}")
    return Recovery(rid, "uninstall", None, f"{cur.status} revision {cur.revision} of {who} (not live) "
                                           "never deployed; uninstalled")


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        value = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def recover(helm: Helm, fence: Fence, rec: Recovery, report: Callable[[Recovery], None]) -> None:
    """Carry out ``rec`` (rollback or uninstall) under the fence, then ``report`` it.

    Raises:
        Deposed: we lost the Lease before the write.
        HelmError: helm refused.
    """
    if rec.action == "skip":
        return
    ns, name = rec.release.split("/", 1)
    fence.check(f"helm {rec.action} {rec.release} (stuck)")
    if rec.action == "rollback":
        assert rec.revision is not None
        helm.rollback(name, ns, rec.revision)
    else:
        helm.uninstall(name, ns)
    log.warning("recovered stuck release %s: %s", rec.release, rec.why)
    report(rec)
