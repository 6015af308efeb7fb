"""``herd-sandbox kube serve``: prints the kubeconfig path, serves real kubectl, stops on SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import Kubectl


@pytest.mark.allow_subprocess
def test_serve_prints_kubeconfig_and_stops_on_interrupt(toolchain: Any, tmp_path: Path) -> None:
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "herd_sandbox", "kube", "serve", "--nodes", "2", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        kubeconfig = Path(proc.stdout.readline().strip())
        assert kubeconfig.parent.parent == tmp_path and kubeconfig.stat().st_mode & 0o777 == 0o600

        nodes = Kubectl(toolchain.kubectl, kubeconfig).json("get", "nodes")
        assert [n["metadata"]["name"] for n in nodes["items"]] == ["node-1", "node-2"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.wait()
