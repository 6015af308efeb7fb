"""Benchmark: the shipped package and a boot under real systemd (issue 15's figures).

Runs the bake test (``tests/ship/test_bake.py``: the .deb built, installed into a fresh Debian 12
root made with mmdebstrap, booted with ``systemd-nspawn --boot`` as a worker of a sandbox cluster)
``--runs`` times, each in a fresh interpreter and a fresh root, and reads the figures the test
writes to ``HERD_SHIP_FIGURES``:

- ``deb_size_mib``: the .deb (xz) in MiB; ``installed_size_mib``: dpkg's ``Installed-Size``;
- ``boot_to_joined_s``: from starting ``systemd-nspawn --boot`` to the worker's launch lifecycle
  action completed (InService), spread over the runs;
- ``poweroff_with_leave_s``: ``systemctl poweroff`` in the container until it stopped, the
  watcher's leave included, spread over the runs;
- ``exposure``: ``systemd-analyze security --offline=yes`` of each installed unit.

Needs what the bake test needs (root, mmdebstrap, systemd-nspawn, the Debian mirror apt uses);
a run the test skips or fails is an error naming it. Prints one JSON document.
Usage: ``.venv/bin/python bench/ship.py [--runs 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def one_run(work: Path) -> dict[str, float]:
    """The bake test once; the figures it wrote. Raises SystemExit when it did not pass."""
    figures = work / "figures.json"
    env = {**os.environ, "HERD_SHIP_FIGURES": str(figures)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",  # noqa: S603
                        f"--basetemp={work / 'pt'}", "tests/ship/test_bake.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 or "skipped" in r.stdout.splitlines()[-1] or not figures.exists():
        raise SystemExit(f"tests/ship/test_bake.py did not pass ({r.returncode}):\n{r.stdout[-3000:]}")
    return dict(json.loads(figures.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="bake-and-boot runs")
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix=f"bench-ship-{i}-") as tmp:
            runs.append(one_run(Path(tmp)))
    last = runs[-1]
    doc = {"deb_size_mib": last[".deb size (MiB)"], "installed_size_mib": last["installed size (MiB)"],
           "boot_to_joined_s": spread([r["boot-to-joined (s)"] for r in runs]),
           "poweroff_with_leave_s": spread([r["poweroff with leave (s)"] for r in runs]),
           "exposure": {k.removeprefix("exposure "): v for k, v in last.items() if k.startswith("exposure ")},
           "runs": runs}
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
