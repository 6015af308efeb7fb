"""``herd-sandbox …``: the local region's command line (never part of the agent).

``herd-sandbox run [SCENARIO]`` runs a whole-cluster scenario; ``herd-sandbox aws serve`` and
``herd-sandbox kube serve`` run one part by hand (docs/sandbox.md); ``herd-sandbox aws fault``,
``aws imds …`` and ``instance die`` inject faults into running parts.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from herd_agent.cli import LazyGroup

SANDBOX_COMMANDS: dict[str, str] = {
    "aws": "herd_sandbox.aws.cli:aws",
    "instance": "herd_sandbox.instance_cli:instance",
    "kube": "herd_sandbox.kube.cli:kube",
    "run": "herd_sandbox.scenario.cli:run",
}


EXIT_BAD_INPUT = 65
"""EX_DATAERR: the sandbox refused the input (unknown identity field, a value of the wrong kind)."""
EXIT_NOT_FOUND = 66
"""EX_NOINPUT: no such instance (in the region, or no instance directory at the path given)."""
EXIT_UNREACHABLE = 69
"""EX_UNAVAILABLE: no sandbox region answers at the endpoint given."""


def fail(code: int, message: str) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code`` (one of the ``EXIT_*`` above;
    a malformed command line is click's usage error, exit 2)."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.group(cls=LazyGroup, lazy=SANDBOX_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def sandbox() -> None:
    """The local region: emulated AWS, IMDS and Kubernetes API, real etcd (docs/sandbox.md)."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``herd-sandbox``."""
    sandbox.main(args=argv, prog_name="herd-sandbox")
    sys.exit(0)
