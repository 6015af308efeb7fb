"""k3s join tokens: their two kinds, their two formats, and where k3s reads and writes them. Pure.

From the k3s documentation ("k3s token", docs.k3s.io/cli/token):

- **Server token** (``--token`` / ``token-file``): joins servers and agents; amounts to full admin
  of the cluster, and is the passphrase of the bootstrap data. Only control planes hold it.
- **Agent token** (``--agent-token`` / ``agent-token-file``): joins agents only. Workers hold only
  this one.
- **Short format**: the credentials alone (a password). A joiner using it trusts whatever CA it is
  shown. The founder of a cluster can only start with a short token.
- **Secure format**: ``K10<sha256 hex of the cluster CA certificate PEM>::<user>:<password>``
  (``server:`` for the server token, ``node:`` for the agent token). With it, a joiner fetches
  ``/cacerts`` from the server without verification, hashes the bytes and compares them with the
  token before it sends any credential, then verifies the server against that CA. k3s writes both
  tokens in this format once it runs: ``/var/lib/rancher/k3s/server/token`` and
  ``/var/lib/rancher/k3s/server/agent-token``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_FILE = "/var/lib/herd-agent/token"
"""The token this instance joins with (server token on control planes, agent token on workers), 0600."""
AGENT_TOKEN_FILE = "/var/lib/herd-agent/agent-token"
"""Control planes only: the agent token k3s' server hands out to agents (``agent-token-file``), 0600."""
SERVER_CA_FILE = "/var/lib/herd-agent/server-ca.crt"
"""The cluster CA the agent pinned from a secure token (after checking its hash), 0644."""
K3S_SERVER_TOKEN = "/var/lib/rancher/k3s/server/token"
"""Written by a running k3s server: the server token in secure format."""
K3S_AGENT_TOKEN = "/var/lib/rancher/k3s/server/agent-token"
"""Written by a running k3s server: the agent token in secure format."""

_SECURE_RE = re.compile(r"K10([0-9a-f]{64})::(.+)")


@dataclass(frozen=True)
class JoinToken:
    """A parsed k3s token.

    Attributes:
        ca_hash: sha256 hex of the cluster CA PEM (secure format), or None (short format).
        credentials: what follows ``::`` (``server:PASSWORD`` / ``node:PASSWORD``), or the
            whole short token.
    """

    ca_hash: str | None
    credentials: str

    @property
    def secure(self) -> bool:
        """True for the secure (``K10…::``) format: the joiner can verify the cluster's CA."""
        return self.ca_hash is not None


def parse(text: str) -> JoinToken:
    """Parse a token (surrounding whitespace ignored).

    Raises:
        ValueError: empty, or a line break or NUL inside (never echoes the value).
    """
    value = text.strip()
    if not value or any(ch in value for ch in "\r\n\0"):
        raise ValueError("a k3s token must be one non-empty line")
    m = _SECURE_RE.fullmatch(value)
    if m:
        return JoinToken(m.group(1), m.group(2))
    return JoinToken(None, value)


def ca_hash(ca_pem: bytes) -> str:
    """The hash a secure token carries: sha256 hex of the CA certificate bundle exactly as served."""
    import hashlib  # lazily: ~0.85 MiB resident, and the watcher imports this module

    return hashlib.sha256(ca_pem).hexdigest()


def ca_matches(token: JoinToken, ca_pem: bytes) -> bool:
    """True when ``ca_pem`` is the CA the secure ``token`` names (always False for a short token)."""
    return token.ca_hash is not None and token.ca_hash == ca_hash(ca_pem)
