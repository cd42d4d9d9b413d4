"""What build_runtime starts on a real machine (here: no NVIDIA GPU, so the NullBackend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.policy.signals import CompositeSignals
from app.core.settings import Settings
from app.core.signals.exclusive_apps import ExclusiveApps
from app.core.signals.gamemode import GameModeWatcher
from app.core.signals.steam import SteamGames
from app.core.wiring import build_runtime


def test_game_watchers_run_without_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`daemon --no-api` still watches GameMode: D-Bus needs the asyncio thread, not the API."""
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)  # no bus: the watcher stays inert
    runtime = build_runtime(Settings(), with_api=False, audit=False)
    try:
        signals = runtime.steward.signals
        assert isinstance(signals, CompositeSignals)
        kinds = {type(source) for source in signals.sources}
        assert {SteamGames, ExclusiveApps, GameModeWatcher} <= kinds
        assert runtime.api is None and runtime.aio is not None and runtime.aio.running
    finally:
        runtime.stop()
    assert not runtime.aio.running


def test_a_simulation_without_the_api_starts_no_asyncio_thread() -> None:
    runtime = build_runtime(Settings(), simulate="desktop-idle", with_api=False, audit=False)
    try:
        assert runtime.aio is None
    finally:
        runtime.stop()
