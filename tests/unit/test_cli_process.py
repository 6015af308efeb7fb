"""The installed console script, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.allow_subprocess


def herd(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("herd-agent")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)


def test_console_script_and_module_entry(tmp_path: Path) -> None:
    r = herd("--help")
    assert r.returncode == 0 and "config" in r.stdout
    r2 = subprocess.run([sys.executable, "-m", "herd_agent", "--version"], capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0 and "herd-agent" in r2.stdout


def test_exit_code_78_from_a_real_process(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "herd-agent" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("watch:\n  poll_interval_s: -1\n")
    r = herd("--root", str(tmp_path), "config", "check")
    assert r.returncode == 78
    assert r.stderr.strip() == "watch.poll_interval_s: must be between 0.2 and 60 (got -1)"


def test_usage_error_exit_code() -> None:
    r = herd("config", "check", "--role", "king")
    assert r.returncode == 64
    assert "Invalid value for '--role'" in r.stderr


def test_watcher_import_stays_lean() -> None:
    """Importing the CLI and config must not pull in boto3, a Kubernetes client or the sandbox."""
    code = (
        "import sys, herd_agent.cli, herd_agent.config, herd_agent.logs, herd_agent.host.notify, "
        "herd_agent.host.runner, herd_agent.host.fsroot\n"
        "bad = [m for m in ('boto3', 'botocore', 'lightkube', 'kubernetes', 'moto', 'herd_sandbox') "
        "if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


UNCAUGHT = """
import threading, click
from herd_agent import cli
from herd_agent.redact import register_secret

SECRET = "opaque-0f1e2d3c4b5a-secret"
register_secret(SECRET)

@click.command("boom")
def boom():
    t = threading.Thread(target=lambda: (_ for _ in ()).throw(RuntimeError("thread saw " + SECRET)), name="worker")
    t.start(); t.join()
    raise RuntimeError("main saw " + SECRET)

cli.cli.add_command(boom)
cli.main(["boom"])
"""


def test_uncaught_exceptions_print_redacted_tracebacks() -> None:
    """A bug's traceback (main thread or another) exits 1 and prints no registered secret."""
    r = subprocess.run([sys.executable, "-c", UNCAUGHT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "opaque-0f1e2d3c4b5a-secret" not in r.stderr + r.stdout
    assert "main saw ***" in r.stderr and "thread saw ***" in r.stderr
    assert "Traceback (most recent call last)" in r.stderr
