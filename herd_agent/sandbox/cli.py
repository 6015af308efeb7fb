"""``herd-agent sandbox …``: run the local region's parts by hand."""

from __future__ import annotations

from herd_agent.cli import LazyGroup

import click

SANDBOX_COMMANDS: dict[str, str] = {}


@click.group(cls=LazyGroup, lazy=SANDBOX_COMMANDS)
def sandbox() -> None:
    """The local region: emulated AWS, IMDS and Kubernetes API, real etcd (docs/sandbox.md)."""
