"""What the join has done so far, journaled in ``/var/lib/herd-agent/join.json``.

Kept apart from the join sequence so the watcher can read it without importing the join.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from herd_agent.host.fsroot import HostRoot

STATE_FILE = "/var/lib/herd-agent/join.json"


@dataclass
class JoinState:
    """What the join has done so far (``/var/lib/herd-agent/join.json``)."""

    instance_id: str
    cluster: str
    role: str
    founder: bool = False
    founder_epoch: int | None = None
    endpoint_ip: str | None = None
    configured: bool = False
    ready: bool = False
    hook_completed: bool = False
    updated: float = field(default_factory=time.time)


def load_state(root: HostRoot) -> JoinState | None:
    """The journaled state, or None (missing or unreadable: start over)."""
    try:
        return JoinState(**json.loads(root.read_text(STATE_FILE)))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def save_state(root: HostRoot, state: JoinState) -> None:
    """Write the state (atomic, 0644), stamping ``updated``."""
    state.updated = time.time()
    root.write(STATE_FILE, json.dumps(asdict(state), indent=1) + "\n", mode=0o644, only_if_changed=False)
