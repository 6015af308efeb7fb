"""``herd-sandbox …``: the local region's command line (never part of the agent).

``herd-sandbox run [SCENARIO]`` runs a whole-cluster scenario; ``herd-sandbox aws serve`` and
``herd-sandbox kube serve`` run one part by hand (docs/sandbox.md).
"""

from __future__ import annotations

import sys

import click

from herd_agent.cli import LazyGroup

SANDBOX_COMMANDS: dict[str, str] = {
    "aws": "herd_sandbox.aws.cli:aws",
    "kube": "herd_sandbox.kube.cli:kube",
    "run": "herd_sandbox.scenario.cli:run",
}


@click.group(cls=LazyGroup, lazy=SANDBOX_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def sandbox() -> None:
    """The local region: emulated AWS, IMDS and Kubernetes API, real etcd (docs/sandbox.md)."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``herd-sandbox``."""
    sandbox.main(args=argv, prog_name="herd-sandbox")
    sys.exit(0)
