"""Fakes that fail loudly when called unexpectedly (EKS nodeadm style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from herd_agent.errors import CommandError
from herd_agent.host.runner import Result, Runner


@dataclass
class Expected:
    argv: list[str]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    effect: Callable[[], None] | None = None


@dataclass
class FakeRunner(Runner):
    """A runner that plays back expected commands in order and refuses anything else.

    ``expect(["systemctl", "start", "k3s"])`` plans one call; a call that does not match the next
    planned one raises AssertionError naming both. ``calls`` records what ran (with stdin).
    """

    planned: list[Expected] = field(default_factory=list)
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    default_timeout: float = 60.0

    def expect(self, argv: Sequence[str], returncode: int = 0, stdout: str = "", stderr: str = "",
               effect: Callable[[], None] | None = None) -> FakeRunner:
        self.planned.append(Expected(list(argv), returncode, stdout, stderr, effect))
        return self

    def run(self, argv: Sequence[str], *, timeout: float | None = None, input: str | None = None,
            env: object = None, cwd: str | None = None, check: bool = True) -> Result:
        argv = list(argv)
        if not self.planned:
            raise AssertionError(f"unexpected command {argv!r}: nothing more was planned")
        nxt = self.planned.pop(0)
        if nxt.argv != argv:
            raise AssertionError(f"unexpected command {argv!r}; planned next: {nxt.argv!r}")
        self.calls.append((argv, input))
        if nxt.effect:
            nxt.effect()
        if nxt.returncode and check:
            raise CommandError(argv, nxt.returncode, nxt.stderr)
        return Result(argv, nxt.returncode, nxt.stdout, nxt.stderr, 0.0)

    def assert_done(self) -> None:
        if self.planned:
            raise AssertionError(f"planned commands never ran: {[p.argv for p in self.planned]!r}")
