"""The tray app applies edits of its settings file while it runs (through `make_steward_app`, as `vram-steward
gui` builds it): a valid edit reaches the app and the engine; a file fixed after a broken start turns the
app back from its red "settings broken" state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.cli.gui import make_steward_app
from app.core.config import Settings, load_settings
from app.core.wiring import build_runtime


def test_an_edit_while_running_is_applied(qtbot: Any, scenario_clock: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("resume_cooldown_secs = 30\n")
    settings = load_settings(config)
    runtime = build_runtime(
        settings, simulate="game-launch", clock=scenario_clock, with_api=False, audit=False
    )
    app = make_steward_app(runtime, settings, config, notices=[])
    qtbot.addWidget(app.dashboard)
    try:
        assert app.settings_watcher.poll() == "unchanged"
        config.write_text("resume_cooldown_secs = 5\n# edited by hand\n")
        assert app.settings_watcher.poll() == "applied"
        assert app.settings.resume_cooldown_secs == 5.0
        config.write_text("resume_cooldown_secs = 5\nresume_cooldown_secs = 6\n")  # a repeated key
        qtbot.waitUntil(lambda: app.settings_edit_problem is not None, timeout=5000)  # the app's own timer
        assert any(n.short.startswith("Settings edit not applied") for n in app.current_notices())
        assert app.settings.resume_cooldown_secs == 5.0, "runs on with what it had"
        config.write_text("resume_cooldown_secs = 5\n")  # fixed: the notice goes
        qtbot.waitUntil(lambda: app.settings_edit_problem is None, timeout=5000)
        runtime.steward.tick()  # the engine's next tick (its worker thread is not started here)
        assert runtime.steward.settings.resume_cooldown_secs == 5.0, "through the door to the engine"
    finally:
        app.shutdown()
        runtime.steward.shutdown()


def test_fixing_a_broken_file_while_running_clears_the_red_state(
    qtbot: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("auto_evict = 'yes please'\n")
    runtime = build_runtime(
        Settings(), simulate="game-launch", clock=scenario_clock, with_api=False, audit=False
    )
    app = make_steward_app(
        runtime,
        Settings(),
        config,
        notices=[],
        settings_problems=("auto_evict = 'yes please': expected true",),
    )
    qtbot.addWidget(app.dashboard)
    try:
        assert app.settings_problems
        config.write_text("auto_evict = false\n")
        assert app.settings_watcher.poll() == "applied"
        assert app.settings_problems == () and app.settings.auto_evict is False
    finally:
        app.shutdown()
        runtime.steward.shutdown()
