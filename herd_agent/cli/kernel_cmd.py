"""``herd-agent kernel apply``: the kernel step of the join, alone."""

from __future__ import annotations

import click

from herd_agent.cli.common import prepare
from herd_agent.errors import ExitCode, HerdError


@click.group()
def kernel() -> None:
    """Kernel settings k3s needs: sysctls, modules, systemd drop-ins."""


@kernel.command("apply")
@click.pass_obj
def apply_cmd(obj: object) -> None:
    """Write sysctl.d, modules-load.d and systemd drop-ins, load modules, apply and verify sysctls.

    \b
    Idempotent: a second run writes nothing and runs nothing. Exits 71 when a sysctl does not
    hold after applying it (drift) or has no /proc/sys entry; the lines say which.
    """
    from herd_agent.host import kernel as kernel_step

    cfg = prepare(obj)
    report = kernel_step.apply(obj.root, cfg)  # type: ignore[attr-defined]
    for path in report.written:
        click.echo(f"wrote {path}")
    for module in report.loaded:
        click.echo(f"loaded module {module}")
    problems = [f"sysctl {k}: wanted {w}, reads {g}" for k, (w, g) in report.drift.items()]
    problems += [f"sysctl {k}: no /proc/sys entry (module not loaded?)" for k in report.missing]
    if problems:
        raise HerdError("; ".join(problems), exit_code=ExitCode.OS_ERROR)
    click.echo("kernel settings hold")
