"""Fixtures for the API tests: the real server on loopback (tests/fixtures/api_server.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.api_server import ApiHandle, start_api


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ApiHandle]]:
    """`start(scenario=..., settings=..., clock=...)`: a running server, stopped after the test."""
    handles: list[ApiHandle] = []

    def _start(**kwargs: Any) -> ApiHandle:
        handle = start_api(tmp_path, monkeypatch, **kwargs)
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        handle.stop()


@pytest.fixture
def api(start: Callable[..., ApiHandle]) -> ApiHandle:
    """The S2 scenario (game-launch, 12 GiB card, an 8 GiB model) at t = 0, on the real clock."""
    return start()
