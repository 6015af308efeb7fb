"""The one runner for every subprocess the agent starts (cloud-init's ``subp``).

Rules it enforces: argv lists only (never a shell, never a string), a timeout on every call,
output captured, a typed :class:`~herd_agent.errors.CommandError` with the exit code and the
redacted tail of stderr, and secrets kept out of argv and logs. A secret belongs in ``input``
(stdin), ``env`` or a 0600 file; a registered secret found in argv is refused before anything
runs.

Tests swap the module-level runner with :func:`set_runner` (see ``tests/fakes.py``), or point
PATH at shims.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from herd_agent import redact as _redact
from herd_agent.errors import CommandError

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20


@dataclass(frozen=True)
class Result:
    """What a finished command left: argv (redacted), exit status, captured output, seconds taken."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


class Runner:
    """Runs commands. Subclass or replace with :func:`set_runner` in tests.

    Args:
        default_timeout: seconds used when a call names none.
    """

    def __init__(self, default_timeout: float = 60.0) -> None:
        self.default_timeout = default_timeout

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
    ) -> Result:
        """Run ``argv`` and wait for it.

        Args:
            argv: program and arguments; a str is refused (no shell, no splitting).
            timeout: seconds before the process is killed (default ``default_timeout``).
            input: text for stdin (the place for secrets).
            env: extra environment variables merged over ours.
            cwd: working directory.
            check: raise on a non-zero exit.

        Returns:
            A :class:`Result` with redacted argv; stdout/stderr are returned as captured.

        Raises:
            TypeError: argv is a string or holds a non-string.
            ValueError: argv contains a registered secret.
            CommandError: non-zero exit (with ``check``), timeout, or the program is missing.
        """
        if isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a list of str, never a shell string: {argv!r}")
        argv = list(argv)
        shown = [_redact.redact(a) for a in argv]
        if shown != argv:
            raise ValueError(f"refusing to run {shown[0]!r}: a secret is in argv; pass it on stdin, env or a 0600 file")
        limit = self.default_timeout if timeout is None else timeout
        full_env = None
        if env is not None:
            full_env = dict(os.environ)
            full_env.update(env)
        log.debug("run: %s (timeout %.0fs)", " ".join(shown), limit)
        started = time.monotonic()
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                argv,
                input=input,
                capture_output=True,
                text=True,
                timeout=limit,
                env=full_env,
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            tail = _tail(exc.stderr)
            log.warning("command %s timed out after %.0fs", shown[0], limit)
            raise CommandError(shown, None, tail, timed_out=True) from None
        except FileNotFoundError:
            raise CommandError(shown, 127, f"{argv[0]}: not found on PATH") from None
        duration = time.monotonic() - started
        result = Result(shown, proc.returncode, proc.stdout, proc.stderr, duration)
        if proc.returncode != 0:
            tail = _tail(proc.stderr)
            log.debug("command %s exited %d: %s", shown[0], proc.returncode, tail)
            if check:
                raise CommandError(shown, proc.returncode, tail)
        return result


def _tail(stderr: str | bytes | None) -> str:
    if not stderr:
        return ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = stderr.strip().splitlines()[-STDERR_TAIL_LINES:]
    return _redact.redact("\n".join(lines))


_runner: Runner = Runner()


def get_runner() -> Runner:
    """The process-wide runner."""
    return _runner


def set_runner(runner: Runner) -> Runner:
    """Replace the process-wide runner; returns the previous one (tests restore it)."""
    global _runner
    previous, _runner = _runner, runner
    return previous


def run(argv: Sequence[str], **kwargs: object) -> Result:
    """Shortcut for ``get_runner().run(argv, **kwargs)``; see :meth:`Runner.run`."""
    return _runner.run(argv, **kwargs)  # type: ignore[arg-type]
