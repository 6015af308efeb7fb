"""The identity journal next to the data dir, and data-dir rotation.

The journal (``<data_dir>.identity.json``, mode 0644, no secrets) records which cluster and
member the data dir belongs to::

    {"cluster_id": "13807887513569586722", "member_id": "1886424282058903940",
     "name": "i-0abc", "peer_url": "http://10.0.1.5:2380", "state": "member", "updated": 1763744000.0}

``state`` is ``adding`` (learner added, not yet promoted), ``member`` (voter) or ``removed``.
IDs are decimal strings as on the etcd wire.

A data dir is useless once its member was removed ("the member has been permanently removed")
or it belongs to another cluster; it is then *rotated*: renamed to
``<data_dir>.rotated-<UTC timestamp>`` and kept for forensics, never deleted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from herd_agent.host.fsroot import HostRoot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityRecord:
    """One journal entry (see the module doc for the JSON shape)."""

    cluster_id: int
    member_id: int
    name: str
    peer_url: str
    state: str = "member"
    updated: float = 0.0

    def to_json(self) -> str:
        """JSON text with IDs as decimal strings."""
        d = asdict(self)
        d["cluster_id"] = str(self.cluster_id)
        d["member_id"] = str(self.member_id)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"


def journal_path(data_dir: str) -> str:
    """Host path of the journal that belongs to ``data_dir``."""
    return data_dir.rstrip("/") + ".identity.json"


def read_journal(root: HostRoot, data_dir: str) -> IdentityRecord | None:
    """The journal of ``data_dir``, or None when missing or unreadable (logged)."""
    text = root.read_text(journal_path(data_dir), default="")
    if not text:
        return None
    try:
        d = json.loads(text)
        return IdentityRecord(int(d["cluster_id"]), int(d["member_id"]), str(d["name"]), str(d["peer_url"]),
                              str(d.get("state", "member")), float(d.get("updated", 0.0)))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable etcd identity journal %s: %s", journal_path(data_dir), exc)
        return None


def write_journal(root: HostRoot, data_dir: str, record: IdentityRecord) -> IdentityRecord:
    """Write ``record`` (stamped with the current time) atomically, mode 0644; returns it."""
    stamped = IdentityRecord(record.cluster_id, record.member_id, record.name, record.peer_url, record.state,
                             time.time())
    root.write(journal_path(data_dir), stamped.to_json(), mode=0o644, only_if_changed=False)
    return stamped


def data_dir_in_use(root: HostRoot, data_dir: str) -> bool:
    """True when the data dir exists and is not empty (etcd has written a member into it)."""
    p = root.path(data_dir)
    return p.is_dir() and any(p.iterdir())


def rotate_data_dir(root: HostRoot, data_dir: str, reason: str, now: float | None = None) -> str | None:
    """Rename the data dir (and its journal) to ``<data_dir>.rotated-<YYYYmmddTHHMMSSZ>``.

    Args:
        reason: why, for the log line.
        now: epoch seconds for the name (default now); a numeric suffix avoids collisions.

    Returns:
        The new host path, or None when there was no data dir.
    """
    src = root.path(data_dir)
    if not src.exists():
        return None
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{data_dir.rstrip('/')}.rotated-{stamp}"
    target, n = base, 1
    while root.exists(target):
        n += 1
        target = f"{base}.{n}"
    src.rename(root.path(target))
    jp = root.path(journal_path(data_dir))
    if jp.exists():
        jp.rename(root.path(target + ".identity.json"))
    log.warning("rotated etcd data dir %s to %s: %s", data_dir, target, reason)
    return target
