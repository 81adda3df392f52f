"""Suite-wide fixtures: a blocking-I/O detector on every event loop, and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from tests.fakes.clock import FakeClock


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which the event loop thread makes a blocking call (STYLE rule 8)."""
    with blockbuster_ctx() as bb:
        # pytest's own bookkeeping and the coverage of temporary files made by fixtures
        # happen outside the code under test.
        bb.functions["os.stat"].can_block_in("_pytest/tmpdir.py", {"getbasetemp"})
        yield bb


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test advances it."""
    return FakeClock()
