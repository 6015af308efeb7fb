"""The k3s join token: fetch it (SSM SecureString or Secrets Manager), create it (founder), hand it to k3s.

The token never appears in logs (registered with the redactor the moment it is read), argv or
the k3s config file: k3s reads it from ``token-file`` (``/var/lib/herd-agent/token``, mode 0600).
"""

from __future__ import annotations

import logging
import secrets

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode, HerdError
from herd_agent.host.fsroot import HostRoot
from herd_agent.redact import register_secret

log = logging.getLogger(__name__)

TOKEN_FILE = "/var/lib/herd-agent/token"


class MissingTokenError(HerdError):
    """The join token does not exist (exit 66)."""

    exit_code = ExitCode.NO_INPUT


def token_name(cfg: Config, ident: Identity) -> str:
    """The SSM parameter name or Secrets Manager id, with ``{cluster}`` filled in."""
    return cfg.expand("token.name", cluster=ident.cluster)


def _read_action(source: str) -> str:
    return "ssm:GetParameter" if source == "ssm" else "secretsmanager:GetSecretValue"


def fetch(cfg: Config, ident: Identity) -> str | None:
    """The token, or None when it does not exist yet.

    Raises:
        AwsError: the read was refused (AccessDenied names the IAM action) or failed.
    """
    from herd_agent import aws

    name = token_name(cfg, ident)
    if cfg.get("token.source") == "ssm":
        ssm = aws.client("ssm", ident.region)
        try:
            value = aws.call(ssm, "GetParameter", Name=name, WithDecryption=True)["Parameter"]["Value"]
        except aws.AwsError as exc:
            if exc.code == "ParameterNotFound":
                return None
            raise
    else:
        sm = aws.client("secretsmanager", ident.region)
        try:
            value = aws.call(sm, "GetSecretValue", SecretId=name)["SecretString"]
        except aws.AwsError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise
    register_secret(value)
    return str(value)


def require(cfg: Config, ident: Identity) -> str:
    """The token; a missing one is an error that names the parameter and the IAM action.

    Raises:
        MissingTokenError: no such parameter/secret (exit 66).
        AwsError: refused or failed.
    """
    value = fetch(cfg, ident)
    if value is None:
        source = cfg.get("token.source")
        where = "SSM parameter" if source == "ssm" else "Secrets Manager secret"
        raise MissingTokenError(
            f"join token {where} {token_name(cfg, ident)!r} does not exist (read with {_read_action(source)}): "
            "the founding control plane creates it; check token.name and token.source, or create it as a "
            "SecureString / secret"
        )
    return value


def create(cfg: Config, ident: Identity) -> str:
    """Founder only: create the token unless it exists; returns the token in force.

    The write is conditional (SSM ``Overwrite=False`` / Secrets Manager ``CreateSecret``), so two
    writers end with one token: the loser reads the winner's.

    Raises:
        AwsError: refused or failed.
    """
    from herd_agent import aws

    existing = fetch(cfg, ident)
    if existing is not None:
        return existing
    value = secrets.token_hex(32)
    register_secret(value)
    name = token_name(cfg, ident)
    try:
        if cfg.get("token.source") == "ssm":
            aws.call(aws.client("ssm", ident.region), "PutParameter", Name=name, Value=value, Type="SecureString",
                     Overwrite=False, Description=f"k3s join token of cluster {ident.cluster} (herd-agent)")
        else:
            aws.call(aws.client("secretsmanager", ident.region), "CreateSecret", Name=name, SecretString=value,
                     Description=f"k3s join token of cluster {ident.cluster} (herd-agent)")
    except aws.AwsError as exc:
        if exc.code not in ("ParameterAlreadyExists", "ResourceExistsException"):
            raise
        return require(cfg, ident)
    log.info("created the join token %s", name)
    return value


def write_file(root: HostRoot, value: str) -> bool:
    """Write the token file k3s reads (``token-file``), mode 0600; True when it changed."""
    return root.write(TOKEN_FILE, value + "\n", mode=0o600)
