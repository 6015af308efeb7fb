"""Fixtures for the local AWS region tests (the region's own fixtures plus small helpers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff, ThrottledRetryableChecker

from herd_sandbox.aws import pytest_fixtures
from herd_sandbox.aws.region import Hook, Region

aws_region = pytest_fixtures.aws_region
make_aws_region = pytest_fixtures.make_aws_region


@pytest.fixture
def group(aws_region: Region) -> Callable[..., list[str]]:
    """Create a launch template + group; returns ``make(name, desired, hooks=…) -> instance ids``."""

    def make(name: str = "workers", desired: int = 1, hooks: tuple[Hook, ...] = (), **kw: Any) -> list[str]:
        aws_region.create_launch_template(f"{name}-lt", user_data="#!/bin/sh\necho hello\n")
        aws_region.create_group(name, f"{name}-lt", desired=desired, max_size=max(desired, 1) * 3, hooks=hooks, **kw)
        return aws_region.group_instances(name)

    return make


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make botocore's standard-mode retries immediate; records, per retry, whether botocore
    classified the error as a throttling error (its fixed throttling-code list)."""
    seen: list[bool] = []
    checker = ThrottledRetryableChecker()

    def delay_amount(self: ExponentialBackoff, context: Any) -> float:
        seen.append(checker.is_retryable(context))
        return 0.0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)
    return seen
