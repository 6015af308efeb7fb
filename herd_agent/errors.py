"""Typed errors and the process exit codes they map to.

Every error the agent raises on purpose derives from :class:`HerdError` and carries an exit
code, so a failing step ends with a distinct, documented status (see docs/exit-codes.md).
Codes follow BSD sysexits(3) where one fits.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. Values from sysexits(3) where one fits, else 80+ for our own."""

    OK = 0
    FAILURE = 1
    USAGE = 64  # EX_USAGE: bad command line
    DATA = 65  # EX_DATAERR: malformed input from the cloud (e.g. bad tags)
    NO_INPUT = 66  # EX_NOINPUT: a required remote object is missing (e.g. join token)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: a required party never answered (e.g. no control plane)
    SOFTWARE = 70  # EX_SOFTWARE: internal error
    OS_ERROR = 71  # EX_OSERR: a host operation failed
    CANT_CREATE = 73  # EX_CANTCREAT: a host file could not be written
    TEMP_FAIL = 75  # EX_TEMPFAIL: transient, retry later
    NO_PERM = 77  # EX_NOPERM: AWS/Kubernetes refused (AccessDenied, 403)
    CONFIG = 78  # EX_CONFIG: invalid configuration
    COMMAND = 80  # a subprocess failed or timed out
    TIMEOUT = 81  # a bounded wait ran out
    CA_MISMATCH = 82  # a control plane's CA does not match the secure join token's hash (rogue or foreign)
    SUPERSEDED = 83  # this founder's claim was taken over by a later founder epoch (fenced out)


class HerdError(Exception):
    """Base of every deliberate agent error.

    Args:
        message: one line a person can act on; it names the input and the fix.
        exit_code: the process status the CLI exits with when this error ends a command.
    """

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(HerdError):
    """Invalid configuration; ``problems`` holds one ``key.path: problem (got VALUE)`` line each."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class HostWriteError(HerdError):
    """A file under the host root could not be written."""

    exit_code = ExitCode.CANT_CREATE


class CommandError(HerdError):
    """A subprocess exited non-zero or timed out.

    Attributes:
        argv: the (redacted) argument list.
        returncode: exit status, or None when the command timed out.
        stderr_tail: the last lines of its standard error, redacted.
    """

    exit_code = ExitCode.COMMAND

    def __init__(self, argv: list[str], returncode: int | None, stderr_tail: str, *, timed_out: bool = False):
        what = "timed out" if timed_out else f"exited {returncode}"
        msg = f"command {argv[0]!r} {what}"
        if stderr_tail:
            msg += f": {stderr_tail}"
        super().__init__(msg)
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out
