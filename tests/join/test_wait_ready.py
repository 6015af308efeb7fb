"""Waiting for the Node: progress lines for systemd STATUS=, bounded by a timeout (exit 81)."""

from __future__ import annotations

import pytest

from herd_agent.errors import ExitCode, HerdError
from herd_agent.kube import wait_node_ready
from herd_sandbox.kube.sandbox import KubeSandbox


def test_progress_until_ready(kube_sandbox: KubeSandbox, kube_client) -> None:
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            kube_sandbox.add_node("i-0abc", ready=False)
        elif len(lines) == 2:
            kube_sandbox.set_node_ready("i-0abc", True)

    wait_node_ready(lambda: kube_client, "i-0abc", 30, progress=progress, poll_s=0.01)
    assert "Node not registered yet" in lines[0]
    assert "Node registered, not Ready" in lines[1]
    assert all(line.startswith("waiting for Node i-0abc to be Ready") for line in lines)


def test_timeout_is_exit_81(kube_sandbox: KubeSandbox, kube_client) -> None:
    kube_sandbox.add_node("i-0def", ready=False)
    now = [0.0]

    def progress(line: str) -> None:
        now[0] += 5

    with pytest.raises(HerdError) as exc:
        wait_node_ready(lambda: kube_client, "i-0def", 20, progress=progress, poll_s=0.001, clock=lambda: now[0])
    assert exc.value.exit_code == ExitCode.TIMEOUT
    assert "Node i-0def not Ready after 20s: Node registered, not Ready" in str(exc.value)
