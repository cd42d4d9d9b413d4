"""The adapters' tests share one world per test: a simulated GPU with a desktop on it, the stand-in servers
that a test adds, and the clocks (tests/fixtures/servers/world.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.servers.world import ServerWorld


@pytest.fixture
def world() -> Iterator[ServerWorld]:
    w = ServerWorld()
    yield w
    w.close()
