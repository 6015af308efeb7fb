"""No secret at rest outside the files meant to hold it (issue 13).

A debug-level run in the sandbox (a control plane and a worker join; the worker is scaled in and
leaves; the webhook is configured and fails, so its failure path logs too), then a walk of the
whole state directory: every instance root, every log. Each secret the run handled — the k3s
server and agent tokens and the ServiceAccount token (read back from SSM here, not from the
agent), the webhook URL and its secret header — may appear only in a file of mode 0600 or
stricter that is not a log. The operator's own config files, which the test wrote, are left out
of the walk: they are input, not something the agent wrote.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from herd_sandbox.aws.region import Region
from herd_sandbox.kube.sandbox import KubeSandbox
from tests.clusters import SandboxCluster

pytestmark = pytest.mark.allow_subprocess

WEBHOOK_URL = "https://127.0.0.1:9/services/T0SANDBOX/B0SANDBOX/whsecretpart0123456789"
WEBHOOK_SECRET = "hdr-secret-5f4e3d2c1b0a"
CONFIG = f"""\
log:
  level: DEBUG
notify:
  webhook_url: {WEBHOOK_URL}
  webhook_secret: {WEBHOOK_SECRET}
"""


def _texts(root: Path):
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.match("etc/herd-agent/config.yaml") or "config.d" in path.parts:
                continue
            try:
                yield path, path.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue


def test_a_debug_run_leaves_no_secret_outside_0600_files(region: Region, kube_sandbox: KubeSandbox,
                                                          tmp_path: Path, toolchain) -> None:
    c = SandboxCluster(region, kube_sandbox, tmp_path, toolchain, CONFIG)
    try:
        (cp,) = c.group("control-plane", 1)
        c.join(cp)
        (w1,) = c.group("node", 1, terminate_hook=True)
        c.join(w1)
        c.watch(w1)
        c.region.wait_for(lambda: "watching for termination" in c.log(w1), timeout=60, what="watcher up")
        c.region.terminate_instance(w1, decrement=True)
        c.region.wait_for(lambda: c.region.lifecycle_state(w1) == "Terminated", timeout=120, what="w1 terminated")
        c.region.wait_for(lambda: "webhook" in c.log(w1).lower(), timeout=30, what="the webhook attempt logged")
    finally:
        c.close()

    ssm = region.client("ssm")
    values = [p["Value"] for page in ssm.get_paginator("get_parameters_by_path").paginate(
        Path=f"/herd/{c.name}", Recursive=True, WithDecryption=True) for p in page["Parameters"]]
    secrets = {v.strip() for v in values if len(v.strip()) >= 16}
    secrets |= {WEBHOOK_URL, WEBHOOK_SECRET, "whsecretpart0123456789"}
    assert len(secrets) >= 5, f"expected the tokens in SSM under /herd/{c.name}: {len(values)} parameters"

    found: dict[str, list[str]] = {}
    for path, text in _texts(tmp_path):
        hits = [s[:12] + "…" for s in secrets if s in text]
        if not hits:
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077 or path.suffix == ".log" or "log" in path.parts:
            found[f"{path.relative_to(tmp_path)} ({oct(mode)})"] = hits
    assert not found, found
