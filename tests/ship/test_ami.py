"""The AMI template and its provisioning scripts.

``packer validate`` runs offline with Debian's packer 1.6.6. Its amazon-ebs builder predates
``metadata_options`` (IMDSv2 required), so the full schema check runs on the template minus that
one block, and the real file gets packer's syntax check; the block itself is checked here.
The provisioning scripts run for real (chroot) in a fresh Debian 12 root with local artifacts: a
stand-in k3s binary (no k3s can be downloaded here) with its checksum, real etcd and helm
binaries packed as their releases are, a chart archive, and the .deb.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.ship.conftest import REPO, need, need_root, run

pytestmark = pytest.mark.allow_subprocess

AMI = REPO / "ami"
TEMPLATE = AMI / "herd-agent.pkr.hcl"
METADATA_BLOCK = re.compile(r"\n  metadata_options \{\n(.*?)\n  \}\n", re.S)


def packer_copy(tmp_path: Path, text: str) -> Path:
    """The template text in a directory that looks like ami/ (scripts beside it)."""
    (tmp_path / "scripts").symlink_to(AMI / "scripts")
    path = tmp_path / "herd-agent.pkr.hcl"
    path.write_text(text)
    return path


def validate(path: Path, deb: Path, charts: Path) -> object:
    return run(["packer", "validate", f"-var-file={AMI / 'example.pkrvars.hcl'}", f"-var=deb_path={deb}",
                f"-var=charts_dir={charts}", str(path)], cwd=REPO, check=False, timeout=120)


def test_imdsv2_required_on_the_build_instance() -> None:
    block = METADATA_BLOCK.search(TEMPLATE.read_text())
    assert block and re.search(r'http_tokens\s*=\s*"required"', block.group(1))


def test_packer_validate_offline(tmp_path: Path) -> None:
    need("packer")
    deb, charts = tmp_path / "x.deb", tmp_path / "charts"
    deb.write_bytes(b"!<arch>\n")
    charts.mkdir()
    text = TEMPLATE.read_text()
    assert len(METADATA_BLOCK.findall(text)) == 1
    (tmp_path / "a").mkdir()
    r = validate(packer_copy(tmp_path / "a", METADATA_BLOCK.sub("\n", text)), deb, charts)
    assert r.returncode == 0, r.stdout + r.stderr
    # The check has teeth: a misspelt argument of the builder fails it.
    (tmp_path / "b").mkdir()
    bad = METADATA_BLOCK.sub("\n", text).replace("instance_type = var.instance_type", "instance_typo = 1")
    r = validate(packer_copy(tmp_path / "b", bad), deb, charts)
    assert r.returncode != 0 and "instance_typo" in r.stdout + r.stderr
    r = run(["packer", "validate", "-syntax-only", str(TEMPLATE)], check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_required_plugins_kept_apart() -> None:
    versions = (AMI / "versions.pkr.hcl").read_text()
    assert "required_plugins" in versions and 'source  = "github.com/hashicorp/amazon"' in versions
    assert "required_plugins" not in TEMPLATE.read_text()
    for var in ("source_ami_name", "k3s_version", "k3s_sha256", "etcd_version", "helm_version", "deb_path",
                "charts_dir"):
        assert f'variable "{var}"' in TEMPLATE.read_text(), var


# --- the provisioning scripts in a Debian root ----------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release_tarball(dest: Path, top: str, binaries: dict[str, Path]) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for name, src in binaries.items():
            tar.add(src, arcname=f"{top}/{name}")
    return dest


@pytest.fixture(scope="module")
def provisioned(base_tarball: Path, deb: Path, toolchain, tmp_path_factory: pytest.TempPathFactory):
    """A Debian 12 root after every provisioning script ran in it, as on the build instance."""
    need_root()
    work = tmp_path_factory.mktemp("ami")
    root = work / "root"
    root.mkdir()
    run(["tar", "-C", str(root), "-xf", str(base_tarball)], timeout=300)
    art = root / "tmp/herd-artifacts"
    (art / "charts").mkdir(parents=True)
    k3s = art / "k3s"  # stand-in: no k3s binary can be downloaded here
    k3s.write_text("#!/bin/sh\necho 'k3s version v1.32.5+k3s1 (stand-in)'\n")
    k3s.chmod(0o755)
    etcd = release_tarball(art / "etcd.tar.gz", "etcd-v3.5.1-linux-amd64",
                           {"etcd": toolchain.etcd, "etcdctl": toolchain.etcdctl})
    helm = release_tarball(art / "helm.tar.gz", "linux-amd64", {"helm": toolchain.helm3})
    chart = work / "demo"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    with tarfile.open(art / "charts/demo-0.1.0.tgz", "w:gz") as tar:
        tar.add(chart, arcname="demo")
    shutil.copy(deb, art / "herd-agent.deb")
    shutil.copytree(AMI / "scripts", root / "tmp/herd-scripts")
    env = {"K3S_VERSION": "v1.32.5+k3s1", "K3S_SOURCE": "/tmp/herd-artifacts/k3s", "K3S_SHA256": sha256(k3s),
           "ETCD_VERSION": "v3.5.1", "ETCD_SOURCE": "/tmp/herd-artifacts/etcd.tar.gz", "ETCD_SHA256": sha256(etcd),
           "HELM_VERSION": "v3.17.0", "HELM_SOURCE": "/tmp/herd-artifacts/helm.tar.gz", "HELM_SHA256": sha256(helm)}

    def script(name: str, check: bool = True, **extra: str):
        argv = ["chroot", str(root), "env", *(f"{k}={v}" for k, v in {**env, **extra}.items()),
                "bash", f"/tmp/herd-scripts/{name}"]
        return run(argv, check=check, timeout=300)

    logs = {name: script(name) for name in ("install-k3s.sh", "install-etcd.sh", "install-helm.sh",
                                            "install-charts.sh", "install-agent.sh")}
    # Leftovers a build instance has, for the hygiene step to remove.
    (root / "etc/ssh").mkdir(exist_ok=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("key")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/cloud/instances/i-0123").mkdir(parents=True)
    (root / "var/log/syslog").write_text("boot log\n")
    logs["cleanup.sh"] = script("cleanup.sh")
    return {"root": root, "script": script, "logs": logs, "env": env}


def test_scripts_install_everything_and_validate_passes(provisioned) -> None:
    root, script = provisioned["root"], provisioned["script"]
    r = script("validate.sh", check=False)
    assert r.returncode == 0 and "validate: image ok" in r.stdout, r.stdout + r.stderr
    assert run(["chroot", str(root), "k3s", "--version"]).stdout.startswith("k3s version v1.32.5+k3s1")
    assert "3.5.1" in run(["chroot", str(root), "etcd", "--version"]).stdout  # the real etcd runs there
    assert "v3." in run(["chroot", str(root), "helm", "version", "--short"]).stdout
    sums = (root / "usr/local/share/herd-agent/charts/SHA256SUMS").read_text()
    assert "demo-0.1.0.tgz" in sums
    for unit in ("k3s.service", "k3s-agent.service"):
        assert (root / "etc/systemd/system" / unit).exists()
        assert not list(root.glob(f"etc/systemd/system/*.wants/{unit}")), f"{unit} is enabled"
    assert (root / "etc/systemd/system/multi-user.target.wants/herd-agent.service").is_symlink()
    assert (root / "usr/local/bin/k3s-killall.sh").stat().st_mode & 0o111
    r = run(["chroot", str(root), "systemd-analyze", "verify", "--man=no", "/etc/systemd/system/k3s-agent.service"],
            check=False)
    assert r.returncode == 0, r.stderr


def test_hygiene(provisioned) -> None:
    root = provisioned["root"]
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/cloud/instances").exists()
    assert [p for p in (root / "var/log").rglob("*") if not p.is_symlink() and p.is_file() and p.stat().st_size] == []


def test_validate_fails_on_leftovers(provisioned) -> None:
    root, script = provisioned["root"], provisioned["script"]
    key = root / "etc/ssh/ssh_host_rsa_key"
    key.write_text("key")
    try:
        r = script("validate.sh", check=False)
        assert r.returncode != 0 and "SSH host keys" in r.stderr
    finally:
        key.unlink()


def test_wrong_checksum_fails_and_installs_nothing(provisioned) -> None:
    root, script = provisioned["root"], provisioned["script"]
    (root / "tmp/herd-artifacts").mkdir(exist_ok=True)
    other = root / "tmp/herd-artifacts/k3s-other"
    other.write_text("#!/bin/sh\necho tampered\n")
    before = sha256(root / "usr/local/bin/k3s")
    r = script("install-k3s.sh", check=False, K3S_SOURCE="/tmp/herd-artifacts/k3s-other",
               K3S_SHA256=provisioned["env"]["K3S_SHA256"])
    assert r.returncode != 0 and "checksum mismatch" in r.stderr, r.stderr
    assert sha256(root / "usr/local/bin/k3s") == before
    r = script("install-k3s.sh", check=False, K3S_SHA256="not-a-digest")
    assert r.returncode != 0 and "not a SHA-256" in r.stderr
