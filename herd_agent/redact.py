"""The one place secrets are scrubbed from text.

Secrets are registered as soon as the agent reads them (join token, ServiceAccount token,
webhook secret); :func:`redact` replaces every registered value, and a few well-known secret
shapes (k3s join tokens, bearer tokens, PEM private keys), with ``***``. The logging setup and the
command runner both call it, so no log line or logged argv can carry a secret.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

# Shapes that are secret whether or not they were registered.
_SHAPES = [
    re.compile(r"K10[0-9a-f]{20,}::[^\s\"']+"),  # k3s secure join token
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
]

_MIN_LEN = 4  # shorter values would mask ordinary words


def register_secret(value: str | bytes | None) -> None:
    """Remember ``value`` so every later :func:`redact` masks it.

    Args:
        value: the secret text; bytes are decoded as UTF-8. Values shorter than 4 characters
            and None are ignored (masking them would destroy ordinary text).
    """
    global _pattern
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = value.strip()
    if len(value) < _MIN_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first so a secret containing another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def register_url(url: str | None) -> None:
    """Register a URL that is itself a credential (a webhook URL): the whole URL, and its path and
    query on their own (where such URLs carry their secret), so neither appears in any text."""
    if not url:
        return
    from urllib.parse import urlsplit

    register_secret(url)
    parts = urlsplit(url.strip())
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    if rest.strip("/"):
        register_secret(rest)


def forget_secrets() -> None:
    """Drop every registered secret (tests use this between cases)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and known secret shape replaced by ``***``."""
    if not text:
        return text
    pat = _pattern
    if pat is not None:
        text = pat.sub(MASK, text)
    text = _SHAPES[0].sub(MASK, text)
    text = _SHAPES[1].sub(lambda m: m.group(1) + MASK, text)
    text = _SHAPES[2].sub(MASK, text)
    return text


def redact_obj(value: object) -> object:
    """Redact strings inside nested lists/tuples/dicts; other values are returned as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(v) for v in value)
    return value
