"""Logging: readable lines on a terminal, structured journald entries under systemd, and
redaction that no log path can bypass.

Redaction is installed as the process-wide LogRecord factory, so every record from every logger
(ours, botocore's, urllib3's) is scrubbed when it is created, before any handler or formatter
sees it: the message is rendered and redacted, exception text is rendered and redacted and the
raw ``exc_info`` dropped, and string ``extra`` fields are redacted. Each handler we install also
carries :class:`RedactFilter` as a second line.

Structured context (``step``, ``instance_id``, ``cluster``) is kept in context variables and
copied onto every record; the journald handler sends them as ``HERD_STEP``,
``HERD_INSTANCE_ID`` and ``HERD_CLUSTER`` fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from herd_agent.redact import redact, redact_obj

_CONTEXT_FIELDS = ("step", "instance_id", "cluster")
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("herd_log_context")

_STANDARD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def _redacting_factory(base: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        scrub_record(record)
        return record

    factory.herd_redacting = True  # type: ignore[attr-defined]
    return factory


def scrub_record(record: logging.LogRecord) -> None:
    """Render and redact a record in place: message, exception, stack and extra string fields.

    Safe to call twice. After it, ``record.args`` is empty and ``record.exc_info`` is None (its
    rendered, redacted text is in ``record.exc_text``).
    """
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not lose the line
        message = f"{record.msg!r} % {record.args!r}"
    record.msg = redact(message)
    record.args = ()
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for key, value in list(vars(record).items()):
        if key not in _STANDARD_ATTRS and isinstance(value, (str, bytes, list, tuple, dict)):
            setattr(record, key, redact_obj(value))
    for key, value in _context.get({}).items():
        if not hasattr(record, key):
            setattr(record, key, value)


class RedactFilter(logging.Filter):
    """A handler filter that redacts the record again (covers records made without the factory)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub ``record`` in place and let it through."""
        scrub_record(record)
        return True


def install_redaction() -> None:
    """Make every LogRecord created from now on redacted at creation (idempotent).

    Two hooks: the LogRecord factory (every record, whoever makes it) and ``Logger.makeRecord``
    on the class (which adds ``extra=`` fields after the factory ran), so extra fields are
    scrubbed too, for loggers that already exist as well as new ones.
    """
    current = logging.getLogRecordFactory()
    if not getattr(current, "herd_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(current))
    make = logging.Logger.makeRecord
    if not getattr(make, "herd_redacting", False):

        def make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(self, *args, **kwargs)
            scrub_record(record)
            return record

        make_record.herd_redacting = True  # type: ignore[attr-defined]
        logging.Logger.makeRecord = make_record  # type: ignore[method-assign]


def under_systemd(environ: dict[str, str] | None = None) -> bool:
    """True when systemd started us: ``JOURNAL_STREAM`` or ``INVOCATION_ID`` is set (systemd.exec(5))."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class JournalHandler(logging.Handler):
    """Send records to journald as native entries with structured fields.

    Fields: ``MESSAGE``, ``PRIORITY`` (syslog level), ``LOGGER``, ``CODE_FILE/LINE/FUNC``,
    ``HERD_STEP``, ``HERD_INSTANCE_ID``, ``HERD_CLUSTER`` (when set) and ``EXCEPTION_TEXT``.

    Args:
        sender: ``systemd.journal.send``-shaped callable (``sender(MESSAGE, **FIELDS)``); the
            default imports systemd-python's. Tests pass a collector.
    """

    _PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def __init__(self, sender: Callable[..., Any] | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        if sender is None:
            from systemd import journal

            sender = journal.send
        self._send = sender
        self.addFilter(RedactFilter())

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and send it with its structured fields."""
        try:
            fields: dict[str, Any] = {
                "PRIORITY": str(self._PRIORITY.get(record.levelno, 6)),
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
                "SYSLOG_IDENTIFIER": "herd-agent",
            }
            for name in _CONTEXT_FIELDS:
                value = getattr(record, name, None)
                if value:
                    fields[f"HERD_{name.upper()}"] = str(value)
            if record.exc_text:
                fields["EXCEPTION_TEXT"] = record.exc_text
            self._send(self.format(record), **fields)
        except Exception:
            self.handleError(record)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL [step] message`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(stepfmt)s%(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """Format with the step, when one is set, in brackets."""
        step = getattr(record, "step", None)
        record.stepfmt = f"[{step}] " if step else ""
        return super().format(record)


def setup_logging(
    level: str | int = "INFO",
    *,
    journal: bool | None = None,
    stream: TextIO | None = None,
    sender: Callable[..., Any] | None = None,
) -> logging.Handler:
    """Configure the root logger once for the whole process.

    Args:
        level: a logging level name or number.
        journal: force journald (True) or console (False); None picks journald under systemd.
        stream: console stream (default stderr).
        sender: journald sender for tests (see :class:`JournalHandler`).

    Returns:
        The handler installed on the root logger (previous handlers are removed).
    """
    install_redaction()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    use_journal = under_systemd() if journal is None else journal
    handler: logging.Handler
    if use_journal:
        handler = JournalHandler(sender=sender)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(ConsoleFormatter())
        handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Chatty libraries stay at WARNING unless we debug.
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if root.level <= logging.DEBUG - 1 else logging.WARNING)
    return handler


def set_context(**fields: str | None) -> None:
    """Set structured fields (``instance_id``, ``cluster``, ``step``) on every later record."""
    current = dict(_context.get({}))
    for key, value in fields.items():
        if key not in _CONTEXT_FIELDS:
            raise ValueError(f"unknown log context field {key!r}; use one of {_CONTEXT_FIELDS}")
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    _context.set(current)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Tag every record logged inside the block with ``step=name``."""
    token = _context.set({**_context.get({}), "step": name})
    try:
        yield
    finally:
        _context.reset(token)


class RateLimitedLogger:
    """Log a repeating error at most once per ``interval`` seconds per key, counting the rest.

    Periodic operations (IMDS polls, hosts refresh) use it so a long outage writes one line a
    minute, not one a second, as WALinuxAgent's periodic operations do.

    Args:
        logger: where to log.
        interval: seconds between two lines for the same key.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] | None = None):
        import time

        self._logger = logger
        self._interval = interval
        self._clock = clock or time.monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago; True when logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" ({skipped} similar suppressed)"
        self._last[key] = now
        self._logger.log(level, msg, *args)
        return True

    def reset(self, key: str) -> None:
        """Forget ``key`` (call when the operation succeeds again, so the next failure logs at once)."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)
