"""Fixtures for the tray app tests: Qt offscreen, private config/state dirs, and a real engine on a
simulated scenario whose clock the test steps."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt creates the QApplication

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.core.gpu.simulated import ManualClock
from tests.fixtures.ui_engine import SteppedSteward


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its config, state, logs and autostart entry under its own tmp_path."""
    for name, sub in (
        ("VRAM_STEWARD_CONFIG_DIR", "config"),
        ("VRAM_STEWARD_STATE_DIR", "state"),
        ("VRAM_STEWARD_LOG_DIR", "log"),
        ("XDG_CONFIG_HOME", "xdg"),
    ):
        monkeypatch.setenv(name, str(tmp_path / sub))
    return tmp_path


@pytest.fixture
def scenario_clock() -> ManualClock:
    return ManualClock(0.0)


@pytest.fixture
def sim_runtime(scenario_clock: ManualClock) -> Iterator[Any]:
    """A real runtime (engine + simulated holder) on the game-launch scenario, without API or audit log."""
    from app.core.wiring import build_runtime

    runtime = build_runtime(
        Settings(), simulate="game-launch", clock=scenario_clock, with_api=False, audit=False
    )
    yield runtime
    runtime.steward.shutdown()


@pytest.fixture
def stepped(sim_runtime: Any, scenario_clock: ManualClock) -> SteppedSteward:
    return SteppedSteward(sim_runtime.steward, scenario_clock)
