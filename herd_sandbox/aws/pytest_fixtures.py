"""pytest fixtures for the local AWS region.

Use from a conftest: ``from herd_sandbox.aws.pytest_fixtures import aws_region, make_aws_region``.

- ``aws_region``: a started :class:`~herd_sandbox.aws.region.Region` (us-east-1,
  time_factor 0.01), stopped after the test whatever its outcome.
- ``make_aws_region``: a factory ``make_aws_region(**Region kwargs) -> Region`` for tests that need
  other options (time factor, ManualClock, token time factor); stopped the same way.

Only one region runs per process at a time, so use one of the two per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from herd_sandbox.aws.region import Region

DEFAULT_TIME_FACTOR = 0.01


@pytest.fixture
def make_aws_region() -> Iterator[Callable[..., Region]]:
    """Factory for started regions; every region it made is stopped at teardown."""
    made: list[Region] = []

    def make(**kwargs: Any) -> Region:
        kwargs.setdefault("time_factor", DEFAULT_TIME_FACTOR)
        region = Region(**kwargs)
        made.append(region)
        return region.start()

    try:
        yield make
    finally:
        for region in reversed(made):
            region.stop()


@pytest.fixture
def aws_region(make_aws_region: Callable[..., Region]) -> Region:
    """A started local AWS region (time_factor 0.01), stopped after the test."""
    return make_aws_region()
