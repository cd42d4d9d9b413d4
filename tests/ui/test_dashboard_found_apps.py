"""Apps discovery found before the tray app listened (discovery starts with the runtime) still reach the
dashboard's Found apps list, through `make_steward_app` as `vram-steward gui` builds the app."""

from __future__ import annotations

from typing import Any

from app.cli.gui import make_steward_app
from app.core.config import Settings
from app.core.servers.discovery import DiscoveryWatcher, FoundApp
from app.core.wiring import build_runtime

COMFYUI = FoundApp(kind="comfyui", display_name="ComfyUI", url="http://127.0.0.1:8188", port=8188)


def test_an_app_found_at_start_is_listed(qtbot: Any, scenario_clock: Any) -> None:
    runtime = build_runtime(
        Settings(), simulate="game-launch", clock=scenario_clock, with_api=False, audit=False
    )
    runtime.discovery = DiscoveryWatcher(lambda: (), discover_fn=lambda _configured: [COMFYUI])
    runtime.discovery.run_once()  # before the GUI exists, as the discovery thread's first run may be
    app = make_steward_app(runtime, Settings(), None, notices=[])
    qtbot.addWidget(app.dashboard)
    try:
        qtbot.waitUntil(lambda: bool(app.dashboard.found_apps.found), timeout=3000)
        assert app.dashboard.found_apps.lines() == ["ComfyUI on port 8188 (http://127.0.0.1:8188)"]
        runtime.discovery.run_once()  # found again: not listed twice
        qtbot.wait(50)
        assert len(app.dashboard.found_apps.found) == 1
    finally:
        app.shutdown()
        runtime.steward.shutdown()
