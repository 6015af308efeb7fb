"""Shared pieces of the watcher tests: the strict fake IMDS with a quiet instance."""

from __future__ import annotations

import pytest

from herd_agent.discovery import imds as paths
from tests.fakes import FakeImds

IID = "i-0123456789abcdef0"


@pytest.fixture
def fake() -> FakeImds:
    """An instance with no termination signal pending: every monitored path planned as quiet."""
    return (FakeImds()
            .answer(paths.INSTANCE_ID, IID)
            .answer(paths.TARGET_LIFECYCLE_STATE, "InService")
            .missing(paths.SPOT_INSTANCE_ACTION)
            .missing(paths.REBALANCE)
            .answer(paths.SCHEDULED_EVENTS, []))
