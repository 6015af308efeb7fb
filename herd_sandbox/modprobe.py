"""A ``modprobe`` stand-in for sandbox instances: "loads" a module into the instance's fake /proc.

The kernel step runs ``modprobe MODULE`` through the agent's runner. On a sandbox instance the
shim named ``modprobe`` on PATH runs this instead of touching the real kernel: it appends the
module to ``/proc/modules`` under ``HERD_AGENT_ROOT`` and creates the /proc/sys entries the real
module brings (``br_netfilter`` brings ``net/bridge/bridge-nf-call-*``), as loading it would.
"""

from __future__ import annotations

import os
import sys

from herd_agent.host.fsroot import HostRoot

MODULE_SYSCTLS = {
    "br_netfilter": ["net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
                     "net/bridge/bridge-nf-call-arptables"],
}


def load(root: HostRoot, module: str) -> None:
    """Mark ``module`` loaded under ``root`` (idempotent)."""
    modules = root.path("/proc/modules")
    modules.parent.mkdir(parents=True, exist_ok=True)
    text = modules.read_text() if modules.exists() else ""
    if not any(line.split()[:1] == [module] for line in text.splitlines()):
        with modules.open("a") as fh:
            fh.write(f"{module} 16384 0 - Live 0x0000000000000000\n")
    for rel in MODULE_SYSCTLS.get(module, []):
        p = root.path("/proc/sys/" + rel)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("0\n")


def main(argv: list[str] | None = None) -> int:
    """``modprobe [-q] MODULE...``; exit 0."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if not args:
        print("usage: modprobe MODULE...", file=sys.stderr)
        return 1
    root = HostRoot(os.environ.get("HERD_AGENT_ROOT", "/"))
    if root.root == HostRoot("/").root:
        print("sandbox modprobe refuses to run without HERD_AGENT_ROOT (it never touches the real kernel)",
              file=sys.stderr)
        return 1
    for module in args:
        load(root, module)
    return 0


if __name__ == "__main__":
    sys.exit(main())
