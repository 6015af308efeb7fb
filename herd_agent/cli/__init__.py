"""The ``herd-agent`` command line (click).

Subcommands load lazily (:class:`LazyGroup`), so ``herd-agent watch`` never imports
boto3 or a Kubernetes client just to parse its arguments.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import traceback
from dataclasses import dataclass

import click

from herd_agent import __version__
from herd_agent.errors import ConfigError, ExitCode, HerdError
from herd_agent.host.fsroot import HostRoot
from herd_agent.redact import redact


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """A click group whose subcommands are ``"module:attribute"`` strings imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, str] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Eager and lazy command names, sorted; a lazy command whose module is not there is left out."""
        present = {name for name, target in self._lazy.items() if _module_exists(target.partition(":")[0])}
        return sorted(set(super().list_commands(ctx)) | present)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import a lazy command when it is first asked for."""
        if cmd_name in self._lazy:
            module, _, attr = self._lazy[cmd_name].partition(":")
            if not _module_exists(module):
                return None
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


@dataclass
class AppContext:
    """What every command gets through ``ctx.obj``: the host root and the log level."""

    root: HostRoot
    log_level: str | None


# Subcommands, added by the issue that builds each one.
COMMANDS = {
    "config": "herd_agent.cli.config_cmd:config",
    "kernel": "herd_agent.cli.kernel_cmd:kernel",
    "join": "herd_agent.cli.join_cmd:join",
    "plan": "herd_agent.cli.join_cmd:plan",
    "hosts": "herd_agent.cli.join_cmd:hosts_group",
    "watch": "herd_agent.cli.leave_cmd:watch",
    "leave": "herd_agent.cli.leave_cmd:leave",
    "etcd": "herd_agent.etcd.cli:etcd",
    "leader": "herd_agent.cli.leader_cmd:leader",
    "releases": "herd_agent.cli.leader_cmd:releases",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=str),
    default="/",
    show_default=True,
    envvar="HERD_AGENT_ROOT",
    help="Directory that stands for / : every host file is read and written under it (env HERD_AGENT_ROOT).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Override log.level from the config.",
)
@click.version_option(__version__, prog_name="herd-agent")
@click.pass_context
def cli(ctx: click.Context, root: str, log_level: str | None) -> None:
    """herd-agent: joins this EC2 instance to its k3s cluster and takes it out gracefully.

    It runs from systemd units on every instance of an Auto Scaling Group: discovers the control
    plane by EC2 tags, joins k3s and etcd, keeps /etc/hosts, and on lifecycle hooks, spot
    interruptions or shutdown drains the node, removes it and completes the lifecycle action.

    \b
    Exit codes: 0 ok, 1 failure, 64 usage, 65 bad cloud data, 66 missing remote object,
    69 unavailable, 73 cannot write, 77 permission denied, 78 bad config, 80 command failed,
    81 timed out (docs/exit-codes.md).
    """
    ctx.obj = AppContext(root=HostRoot(root), log_level=log_level.upper() if log_level else None)


def _print_redacted_traceback(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
    """Print an uncaught exception's traceback with every secret masked (sys/threading excepthook)."""
    text = "".join(traceback.format_exception(exc_type, exc, tb))  # type: ignore[arg-type]
    sys.stderr.write(redact(text))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    sys.stderr.write(f"herd-agent: uncaught exception in thread {args.thread.name if args.thread else '?'}:\n")
    _print_redacted_traceback(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map :class:`HerdError` to its exit code.

    Anything uncaught (a bug) exits 1 with its traceback printed redacted (``herd_agent.redact``),
    in the main thread and in every other thread alike: a traceback can carry a token it was
    handed.
    """
    sys.excepthook = _print_redacted_traceback
    threading.excepthook = _thread_excepthook
    try:
        cli.main(args=argv, prog_name="herd-agent", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.FAILURE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE if isinstance(exc, click.UsageError) else ExitCode.FAILURE)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(redact(line), err=True)
        sys.exit(exc.exit_code)
    except HerdError as exc:
        click.echo(f"herd-agent: error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the last line: a bug's traceback must not print a secret either
        sys.stderr.write("herd-agent: unexpected error (a bug; please report it):\n")
        _print_redacted_traceback(type(exc), exc, exc.__traceback__)
        sys.exit(ExitCode.FAILURE)
    sys.exit(ExitCode.OK)
