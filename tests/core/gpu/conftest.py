"""Fixtures for the NVML backend tests: a manual clock (the stand-in libnvidia-ml.so.1 and its per-test state
file, `fake_nvml`, are in tests/conftest.py: the tray's tests use them too)."""

from __future__ import annotations

import pytest

from app.core.gpu.simulated import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)
