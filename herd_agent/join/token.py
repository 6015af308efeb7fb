"""The k3s join tokens in AWS: fetch, create (founder), publish the secure ones, hand them to k3s.

Two tokens, two parameters or secrets (see :mod:`herd_agent.k3s.tokens` for what each can do):

- the **server token**, ``token.server_name`` (unset: ``token.name``): read only by control planes;
- the **agent token**, ``token.agent_name``: the only one a worker reads.

The founder creates both as short tokens (random, conditional writes: SSM ``Overwrite=False`` /
Secrets Manager ``CreateSecret``, so two writers end with one token), starts k3s with them, and
once k3s runs it **publishes** the secure-format tokens k3s wrote
(``/var/lib/rancher/k3s/server/token`` and ``agent-token``) over the short ones. Every later joiner
waits for and uses the secure ones, so the CA of the cluster is checked before a credential is sent.

The tokens never appear in logs (registered with the redactor the moment they are read or made),
argv or the k3s config file: k3s reads them from ``token-file`` / ``agent-token-file`` (0600).
AWS clients are passed in (tests wrap them in botocore's Stubber); default ``aws.client``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from herd_agent.config.loader import Config
from herd_agent.discovery.identity import Identity
from herd_agent.errors import ExitCode, HerdError
from herd_agent.host.fsroot import HostRoot
from herd_agent.k3s.tokens import TOKEN_FILE, JoinToken, parse
from herd_agent.redact import register_secret

log = logging.getLogger(__name__)

SERVER, AGENT = "server", "agent"
__all__ = ["AGENT", "SERVER", "TOKEN_FILE", "MissingTokenError", "TokenStore", "write_file"]


def service_of(cfg: Config) -> str:
    """The AWS service that keeps the tokens: ``ssm`` or ``secretsmanager`` (``token.source``)."""
    return "ssm" if cfg.get("token.source") == "ssm" else "secretsmanager"


class MissingTokenError(HerdError):
    """A join token does not exist (exit 66)."""

    exit_code = ExitCode.NO_INPUT


class TokenStore:
    """The cluster's two join tokens in SSM (SecureString) or Secrets Manager.

    Args:
        cfg: effective config (``token.*``).
        ident: this instance (region, cluster).
        client: the boto3 client of ``token.source`` (:func:`service_of`; tests: Stubber-wrapped);
            default ``aws.client``, made on first use.
    """

    def __init__(self, cfg: Config, ident: Identity, *, client: Any = None) -> None:
        self.cfg, self.ident = cfg, ident
        self.source = cfg.get("token.source")
        self._given = client

    def _client(self) -> Any:
        if self._given is None:
            from herd_agent import aws

            self._given = aws.client(service_of(self.cfg), self.ident.region)
        return self._given

    def name(self, kind: str) -> str:
        """The parameter name / secret id of the ``server`` or ``agent`` token, ``{cluster}`` filled in."""
        if kind == SERVER:
            key = "token.server_name" if self.cfg.get("token.server_name") else "token.name"
        else:
            key = "token.agent_name"
        return self.cfg.expand(key, cluster=self.ident.cluster)

    def fetch(self, kind: str) -> str | None:
        """The ``kind`` token, or None when it does not exist yet.

        Raises:
            AwsError: the read was refused (AccessDenied names the IAM action) or failed.
            HerdError: the stored value is not one line (exit 65; the value is never echoed).
        """
        from herd_agent import aws

        name = self.name(kind)
        try:
            if self.source == "ssm":
                value = aws.call(self._client(), "GetParameter", Name=name, WithDecryption=True)["Parameter"]["Value"]
            else:
                value = aws.call(self._client(), "GetSecretValue", SecretId=name)["SecretString"]
        except aws.AwsError as exc:
            if exc.code in ("ParameterNotFound", "ResourceNotFoundException"):
                return None
            raise
        if not isinstance(value, str):
            raise HerdError(f"join token {name!r} is not a string", exit_code=ExitCode.DATA)
        register_secret(value.strip())
        try:
            parse(value)
        except ValueError:
            raise HerdError(f"join token {name!r} is not one line: rewrite it", exit_code=ExitCode.DATA) from None
        return value.strip()

    def read(self, kind: str) -> JoinToken | None:
        """The ``kind`` token parsed, or None when missing."""
        value = self.fetch(kind)
        return None if value is None else parse(value)

    def require(self, kind: str) -> str:
        """The ``kind`` token; a missing one is an error naming the parameter and the IAM action.

        Raises:
            MissingTokenError: no such parameter/secret (exit 66).
        """
        value = self.fetch(kind)
        if value is None:
            where = "SSM parameter" if self.source == "ssm" else "Secrets Manager secret"
            action = "ssm:GetParameter" if self.source == "ssm" else "secretsmanager:GetSecretValue"
            raise MissingTokenError(
                f"{kind} join token {where} {self.name(kind)!r} does not exist (read with {action}): the founding "
                f"control plane creates it; check token.{'server_name' if kind == SERVER else 'agent_name'} and "
                "token.source")
        return value

    def create(self, kind: str, *, replace: bool = False) -> str:
        """Founder only: create a fresh short ``kind`` token; returns the token in force.

        Args:
            replace: overwrite whatever is stored (a founder taking over from a failed one: the old
                tokens belong to a cluster that never came up). Otherwise the write is conditional,
                and the loser of a race reads the winner's token.

        Raises:
            AwsError: refused or failed.
        """
        from herd_agent import aws

        if not replace:
            existing = self.fetch(kind)
            if existing is not None:
                return existing
        value = secrets.token_hex(32)
        register_secret(value)
        try:
            self._put(kind, value, overwrite=replace)
        except aws.AwsError as exc:
            if exc.code not in ("ParameterAlreadyExists", "ResourceExistsException"):
                raise
            return self.require(kind)
        log.info("created the %s join token %s", kind, self.name(kind))
        return value

    def publish(self, kind: str, value: str) -> bool:
        """Founder only: store the secure-format ``value`` k3s wrote; True when it changed the store.

        Raises:
            ValueError: ``value`` is not in secure format.
            AwsError: refused or failed.
        """
        if not parse(value).secure:
            raise ValueError(f"refusing to publish a short {kind} token")
        register_secret(value)
        if self.fetch(kind) == value:
            return False
        self._put(kind, value, overwrite=True)
        log.info("published the secure %s join token %s", kind, self.name(kind))
        return True

    def _put(self, kind: str, value: str, *, overwrite: bool) -> None:
        from herd_agent import aws

        name = self.name(kind)
        what = f"k3s {kind} join token of cluster {self.ident.cluster} (herd-agent)"
        key = self.cfg.get("kms.key_id")  # None: the AWS-managed key of the service
        if self.source == "ssm":
            aws.call(self._client(), "PutParameter", Name=name, Value=value, Type="SecureString",
                     Overwrite=overwrite, Description=what, **({"KeyId": key} if key else {}))
            return
        create = {"Name": name, "SecretString": value, "Description": what, **({"KmsKeyId": key} if key else {})}
        if overwrite:
            try:  # a secret keeps the key it was created with (Secrets Manager PutSecretValue)
                aws.call(self._client(), "PutSecretValue", SecretId=name, SecretString=value)
                return
            except aws.AwsError as exc:
                if exc.code != "ResourceNotFoundException":
                    raise
        aws.call(self._client(), "CreateSecret", **create)


def write_file(root: HostRoot, value: str, path: str = TOKEN_FILE) -> bool:
    """Write a token file k3s reads (``token-file`` / ``agent-token-file``), mode 0600; True when changed."""
    return root.write(path, value + "\n", mode=0o600)
