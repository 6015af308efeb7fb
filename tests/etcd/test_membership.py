"""Join, found and leave on real etcd 3.5 clusters on loopback (see harness.py)."""

from __future__ import annotations

import pytest

from tests.etcd.harness import healthy_voters_equal, wait_for

pytestmark = pytest.mark.allow_subprocess


def test_found_three_member_cluster(lab):
    a = lab.found()
    b = lab.join()
    c = lab.join()
    wait_for(lambda: healthy_voters_equal(lab, [a, b, c]), what="three healthy voters")
    st = lab.status()
    assert st.margin == 1
    assert all(["systemctl", "start", "herd-etcd.service"] in i.runner.calls for i in (a, b, c))
    env = c.root.read_text("/etc/herd-agent/etcd.env")
    assert "ETCD_INITIAL_CLUSTER_STATE=existing" in env
    assert f"{a.name}={a.membership.peer_url}" in env and f"{b.name}={b.membership.peer_url}" in env
