"""One sandbox region per module: moto's warm-up (~3 s) is paid once, groups get unique names."""

from __future__ import annotations

import itertools

import pytest

from herd_sandbox.aws.region import Region

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_region(region: Region) -> Region:
    """The module's region (tests/conftest.py)."""
    return region


@pytest.fixture
def unique() -> str:
    """A fresh name suffix for groups and templates in the shared region."""
    return f"t{next(_names)}"
