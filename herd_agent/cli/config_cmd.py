"""``herd-agent config …``: check and print the effective configuration."""

from __future__ import annotations

import click

from herd_agent.config.loader import MAIN_FILE, load_config
from herd_agent.config.schema import ROLES


@click.group()
def config() -> None:
    """Inspect the agent's configuration."""


@config.command("check")
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help=f"Main config file to check (default {MAIN_FILE} under --root); drop-ins are read from config.d/ beside it.",
)
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default=None,
    help="Check the keys this role requires (identity.role in the config wins).",
)
@click.pass_obj
def check(obj: object, file: str | None, role: str | None) -> None:
    """Validate the config files and print the effective configuration, secrets masked.

    \b
    Reads the main file, then config.d/*.yaml in lexical order; mappings deep-merge, lists
    replace. Exit 0 and the merged YAML on stdout when valid. Otherwise one line per problem
    on stderr, `key.path: problem (got VALUE)` (or FILE:LINE:COLUMN for YAML syntax), exit 78.
    """
    cfg = load_config(obj.root, file, role=role)  # type: ignore[attr-defined]
    sources = ", ".join(cfg.sources) if cfg.sources else "none (defaults only)"
    click.echo(f"# sources: {sources}")
    if cfg.role:
        click.echo(f"# checked for role: {cfg.role}")
    if cfg.get("etcd.mode") == "external":  # etcd's transport, in plain words (docs/etcd.md)
        from herd_agent.etcd.settings import EtcdSettings, transport_of

        click.echo(f"# etcd transport: {transport_of(EtcdSettings.from_config(cfg))}")
        if cfg.get("etcd.insecure_plain_http"):
            click.echo("warning: etcd.insecure_plain_http: the etcd members are unencrypted and unauthenticated",
                       err=True)
    click.echo(cfg.to_yaml(), nl=False)
