"""``herd-agent sandbox …``: run the local region's parts by hand."""

from __future__ import annotations

import click

from herd_agent.cli import LazyGroup

SANDBOX_COMMANDS: dict[str, str] = {
    "aws": "herd_agent.sandbox.aws.cli:aws",
    "kube": "herd_agent.sandbox.kube.cli:kube",
    "run": "herd_agent.sandbox.scenario.cli:run",
}


@click.group(cls=LazyGroup, lazy=SANDBOX_COMMANDS)
def sandbox() -> None:
    """The local region: emulated AWS, IMDS and Kubernetes API, real etcd (docs/sandbox.md)."""
