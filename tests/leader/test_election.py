"""Lease election against the emulated API server: real Lease objects, resourceVersion 409s."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from herd_agent.errors import ConfigError
from herd_agent.leader.election import LeaderElector, check_timings
from herd_agent.leader.fence import Deposed, Fence

from .conftest import lease_client


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(kube_sandbox: Any, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(lease_client(kube_sandbox.admin_kubeconfig), "kube-system", "lead", identity, clock=clock)


def lease(kube_sandbox: Any) -> dict[str, Any]:
    return kube_sandbox.get("Lease", "lead", "kube-system")["spec"]


def test_first_candidate_creates_the_lease_second_waits_a_whole_lease_duration(kube_sandbox: Any) -> None:
    clock = Clock()
    a, b = elector(kube_sandbox, "a", clock), elector(kube_sandbox, "b", clock)

    assert a.try_acquire_or_renew()
    assert lease(kube_sandbox)["holderIdentity"] == "a"
    assert lease(kube_sandbox)["leaseTransitions"] == 0
    assert not b.try_acquire_or_renew()  # b starts observing now
    clock.now += 14.9
    assert not b.try_acquire_or_renew()  # unchanged record, but not yet a LeaseDuration of b's clock
    assert not a.holding()  # a did not renew for > RenewDeadline: it stopped working already
    clock.now += 0.2
    assert b.try_acquire_or_renew()
    spec = lease(kube_sandbox)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert b.epoch() is not None and b.epoch().transitions == 1


def test_a_renewed_lease_is_never_taken(kube_sandbox: Any) -> None:
    clock = Clock()
    a, b = elector(kube_sandbox, "a", clock), elector(kube_sandbox, "b", clock)
    assert a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    for _ in range(20):  # 40 s with a renew every 2 s
        clock.now += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert a.holding() and lease(kube_sandbox)["leaseTransitions"] == 0


def test_stale_resource_version_is_a_lost_round(kube_sandbox: Any) -> None:
    clock = Clock()
    a, b = elector(kube_sandbox, "a", clock), elector(kube_sandbox, "b", clock)
    assert a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    clock.now += 16
    # b read the Lease, then a renewed before b's replace: b's PUT carries an old resourceVersion
    from lightkube.resources.coordination_v1 import Lease

    real_get = b.client.get

    def get_then_a_renews(*args: Any, **kwargs: Any) -> Any:
        obj = real_get(*args, **kwargs)
        assert a.try_acquire_or_renew()
        return obj

    b.client.get = get_then_a_renews  # type: ignore[method-assign]
    assert not b.try_acquire_or_renew()
    b.client.get = real_get  # type: ignore[method-assign]
    assert lease(kube_sandbox)["holderIdentity"] == "a"
    assert b.client.get(Lease, "lead", namespace="kube-system").spec.leaseTransitions == 0


def test_release_clears_the_holder_and_the_next_takes_over_at_once(kube_sandbox: Any) -> None:
    clock = Clock()
    a, b = elector(kube_sandbox, "a", clock), elector(kube_sandbox, "b", clock)
    assert a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    assert a.release()
    assert not lease(kube_sandbox).get("holderIdentity")
    assert not a.holding()
    assert b.try_acquire_or_renew()
    assert lease(kube_sandbox)["leaseTransitions"] == 1


def test_renew_loop_gives_up_before_the_deadline_and_the_fence_refuses(kube_sandbox: Any) -> None:
    clock = Clock()
    a = elector(kube_sandbox, "a", clock)
    assert a.try_acquire_or_renew()
    fence = Fence(a.holding, a.epoch, a.remaining_s)
    assert fence.check("first write").transitions == 0
    from lightkube.resources.coordination_v1 import Lease

    other = lease_client(kube_sandbox.admin_kubeconfig)  # someone overwrites the Lease: every renew fails
    obj = other.get(Lease, "lead", namespace="kube-system")
    obj.spec.holderIdentity = "intruder"
    other.replace(obj)
    stop = threading.Event()
    waits: list[float] = []

    def fake_wait(seconds: float | None = None) -> bool:
        waits.append(seconds or 0)
        clock.now += seconds or 0
        return False

    stop.wait = fake_wait  # type: ignore[method-assign]
    a.renew(stop)
    assert sum(waits) <= a.renew_deadline_s
    assert not a.holding()
    with pytest.raises(Deposed):
        fence.check("late write")


def test_client_go_timing_rules() -> None:
    check_timings(15, 10, 2)
    with pytest.raises(ConfigError, match="lease_duration_s"):
        check_timings(10, 10, 2)
    with pytest.raises(ConfigError, match="renew_deadline_s"):
        check_timings(15, 2.4, 2)


def test_jitter_stays_within_client_go_bounds() -> None:
    e = LeaderElector(None, "ns", "n", "me", rand=lambda: 0.999)
    assert 2 <= e.jittered_retry_s() <= 2 + 2 * 1.2


def test_a_write_allowed_then_frozen_past_the_term_is_refused_at_send(kube_sandbox: Any) -> None:
    from lightkube import KubeConfig
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.coordination_v1 import Lease
    from lightkube.resources.core_v1 import ConfigMap

    from herd_agent.kube import fenced_client
    from herd_agent.leader.fence import FencedTransport

    clock = Clock()
    single = KubeConfig.from_file(str(kube_sandbox.admin_kubeconfig)).get()
    client = fenced_client(single, lambda inner: FencedTransport(inner, lambda w: fence.recheck(w)))
    a = LeaderElector(client, "kube-system", "lead", "a", clock=clock)
    fence = Fence(a.holding, a.epoch, a.remaining_s)
    assert a.try_acquire_or_renew()  # the election's own Lease writes are not fenced
    fence.check("create ConfigMap default/late")
    clock.now += a.renew_deadline_s  # frozen between the check and the send, past RenewDeadline
    with pytest.raises(Deposed):
        client.create(ConfigMap(metadata=ObjectMeta(name="late", namespace="default"), data={"k": "v"}))
    assert kube_sandbox.find("ConfigMap", "late", "default") is None
    assert client.get(Lease, "lead", namespace="kube-system").spec.holderIdentity == "a"  # reads pass
    clock.now -= a.renew_deadline_s
    client.create(ConfigMap(metadata=ObjectMeta(name="in-time", namespace="default"), data={"k": "v"}))
    assert kube_sandbox.find("ConfigMap", "in-time", "default") is not None
