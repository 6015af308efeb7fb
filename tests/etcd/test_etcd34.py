"""The same join/leave path against etcd 3.4 (Debian ``etcd-server`` 3.4.23).

``scripts/setup`` unpacks the Debian package's binary into ``.toolchain/bin/etcd-3.4`` with
``apt-get download`` + ``dpkg-deb -x`` (no service is installed or started); an installed
``/usr/bin/etcd`` 3.4 works too. The systemctl stand-in runs it through ``HERD_SANDBOX_ETCD``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from herd_agent.etcd.client import EtcdClient
from tests.etcd.harness import healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess

ETCD34 = shutil.which("etcd-3.4", path=str(Path(__file__).resolve().parents[2] / ".toolchain" / "bin")) \
    or shutil.which("etcd", path="/usr/bin")


@pytest.fixture
def lab34(lab):
    if not ETCD34:
        pytest.skip("etcd 3.4 not found: run scripts/setup (it unpacks Debian's etcd-server into .toolchain)")
    version = subprocess.run([ETCD34, "--version"], capture_output=True, text=True, check=True).stdout
    if "Version: 3.4." not in version:
        pytest.skip(f"/usr/bin/etcd is not etcd 3.4: {version.splitlines()[0]}")
    lab.runner_env["HERD_SANDBOX_ETCD"] = ETCD34
    return lab


def test_found_join_and_leader_leave_on_etcd_34(lab34):
    lab = lab34
    a, b, c = lab.three()
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="three voters on 3.4")
    client = EtcdClient([a.client_url], tls=lab.tls())  # over TLS with client certificates (the default)
    assert client.version(a.client_url)["etcdserver"].startswith("3.4.")
    assert client.prefix(a.client_url) == "/v3"
    st = lab.status()
    leader = next(i for i in (a, b, c) if {m.id: m.name for m in st.members}[st.leader] == i.name)
    result = leader.membership.leave([i.client_url for i in (a, b, c)])
    assert result.removed and result.leadership_to
    leader.alive = False
    wait_for(lambda: healthy_voters_equal(lab, [i for i in (a, b, c) if i is not leader]), what="two voters")
