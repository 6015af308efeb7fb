"""``herd-sandbox kube …``: run the emulated Kubernetes API server by hand."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click


@click.group()
def kube() -> None:
    """The emulated Kubernetes API server (docs/sandbox-kube.md)."""


@kube.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the CA and kubeconfigs go (default: a temporary directory removed on exit).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind (127.0.0.0/8).")
@click.option("--port", "https_port", type=int, default=0, show_default=True, help="HTTPS port (0: any free port).")
@click.option("--http-port", type=int, default=0, show_default=True, help="Plain-HTTP port (0: any free port).")
@click.option("--nodes", type=int, default=0, show_default=True,
              help="Ready nodes to register (node-1, node-2, ...; the first is a control plane).")
@click.option("--time-factor", type=float, default=1.0, show_default=True,
              help="Real seconds per simulated second for grace periods.")
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="Inject an API fault: verb:resource[/sub]=STATUS|slowNs[*COUNT], e.g. "
                   "create:pods/eviction=429*5 (docs/sandbox-kube.md). Repeatable.")
def serve(workdir: Path | None, host: str, https_port: int, http_port: int, nodes: int, time_factor: float,
          faults: tuple[str, ...] = ()) -> None:
    """Serve until interrupted; prints the admin kubeconfig path on the first line of stdout."""
    from herd_sandbox.kube.faults import KubeFault
    from herd_sandbox.kube.sandbox import KubeSandbox

    try:
        rules = [KubeFault.parse(spec) for spec in faults]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with KubeSandbox(workdir, time_factor=time_factor, host=host, https_port=https_port,
                     http_port=http_port) as sandbox:
        for rule in rules:
            sandbox.faults.add(rule)
        for n in range(1, nodes + 1):
            sandbox.add_node(f"node-{n}", control_plane=n == 1)
        click.echo(str(sandbox.admin_kubeconfig))
        click.echo(f"serving {sandbox.url} (HTTP {sandbox.http_url}); Ctrl-C to stop", err=True)
        stop.wait()
