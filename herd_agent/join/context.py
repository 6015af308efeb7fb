"""What every join step runs over: :class:`JoinContext`, and the seams that make plan mode.

The context carries identity (read before the first step, so always present), config, the
journaled :class:`~herd_agent.join.state.JoinState`, the AWS clients and the host seams. Plan mode
(``herd-agent plan join``) is a choice of seams made once, here, not a branch in each step:

- :class:`PlanRoot`: records file changes as unified diffs (secrets masked), writes nothing;
- :class:`PlanRunner`: records commands, runs nothing;
- :meth:`JoinContext.act`: the one door for calls that change something outside the host (AWS
  writes, etcd membership, the Ready wait); in plan mode it records the description instead.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.control_plane import Endpoint
from herd_agent.discovery.identity import Identity
from herd_agent.host import runner as runner_mod
from herd_agent.host.fsroot import HostRoot
from herd_agent.host.notify import Notifier
from herd_agent.host.runner import Result, Runner
from herd_agent.join.state import JoinState, save_state
from herd_agent.k3s.tokens import AGENT_TOKEN_FILE, TOKEN_FILE

log = logging.getLogger(__name__)

SECRET_FILES = (TOKEN_FILE, AGENT_TOKEN_FILE)


class PlanRoot(HostRoot):
    """A HostRoot that records what would be written (as unified diffs) and writes nothing."""

    def __init__(self, root: HostRoot) -> None:
        super().__init__(root.root)
        self.diffs: list[str] = []

    def write(self, host_path: str | PurePosixPath, data: str | bytes, *, mode: int,
              only_if_changed: bool = True) -> bool:
        """Record the change (token files shown as ``***``) and report whether it would change."""
        text = data.decode() if isinstance(data, bytes) else data
        old = self.read_text(host_path, default="") if self.exists(host_path) else ""
        if old == text:
            return False
        secret = str(host_path) in SECRET_FILES
        shown_new = "***\n" if secret else text
        shown_old = "***\n" if secret and old else old
        diff = difflib.unified_diff(shown_old.splitlines(True), shown_new.splitlines(True),
                                    f"{host_path} (now)", f"{host_path} (planned, mode {mode:o})")
        self.diffs.append("".join(diff))
        return True


class PlanRunner(Runner):
    """A runner that records commands and runs nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: Any, **kwargs: Any) -> Result:  # noqa: D102
        self.commands.append(list(argv))
        return Result(list(argv), 0, "", "", 0.0)


@dataclass
class Clients:
    """AWS clients of one join, made on first use (``aws.client``) unless given (tests: Stubber)."""

    region: str
    given: dict[str, Any] = field(default_factory=dict)

    def __call__(self, service: str) -> Any:
        """The client for ``service`` (``ec2``, ``ssm``, ``secretsmanager``, ``autoscaling``)."""
        if service not in self.given:
            from herd_agent import aws

            self.given[service] = aws.client(service, self.region)
        return self.given[service]


@dataclass
class JoinContext:
    """One join run.

    Attributes:
        ident: this instance (read from IMDS before any step).
        cfg: effective config.
        root: the host root (a :class:`PlanRoot` in plan mode).
        state: the journal, loaded or fresh.
        clients: AWS clients.
        runner: runs ``systemctl``/``modprobe`` (a :class:`PlanRunner` in plan mode).
        notifier: systemd ``STATUS=``.
        plan: plan mode (read by the seams above, and by the kernel step for /proc writes).
        kube_client: ``() -> lightkube.Client`` override (tests).
        check: control-plane health check override (tests).
        endpoint: the discovery decision of this run (None when already joined).
        tokens: token values fetched in this run, by kind (never logged).
        planned: descriptions of the changing calls plan mode skipped.
    """

    ident: Identity
    cfg: Config
    root: HostRoot
    state: JoinState
    clients: Clients
    runner: Runner
    notifier: Notifier
    plan: bool = False
    kube_client: Callable[[], Any] | None = None
    check: Callable[[Any], bool] | None = None
    endpoint: Endpoint | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)

    @property
    def joined(self) -> bool:
        """The Node was Ready before, with an endpoint recorded: skip discovery and token fetches."""
        return self.state.ready and self.state.endpoint_ip is not None

    def act(self, description: str, fn: Callable[[], Any], planned: Any = None) -> Any:
        """Run ``fn`` (a call that changes something); in plan mode record ``description`` and
        return ``planned`` instead."""
        if self.plan:
            self.planned.append(description)
            return planned
        return fn()

    def save(self) -> None:
        """Journal the state (not in plan mode)."""
        if not self.plan:
            save_state(self.root, self.state)

    def status(self, text: str) -> None:
        """Log and send ``STATUS=``."""
        log.info("%s", text)
        self.notifier.status(text)


def real_runner() -> Runner:
    """The process-wide runner."""
    return runner_mod.get_runner()
