"""The tray menu built from a snapshot, its entries triggered as a user would; the toggles persist to the
config file and reach the engine; the dashboard and the popup render a snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QMenu

from app.core import config
from app.core.config import Settings
from app.core.holders import ModelState
from app.ui.application import NO_TRAY_NOTICE, StewardApp
from app.ui.presenter import present
from app.ui.tray import ADD_MODEL_TEXT, AUTO_EVICT_TEXT, AUTO_PAUSE_TEXT, fill_menu, state_icon
from app.ui.worker import StewardWorker
from tests.fixtures import ui_snapshots as snaps
from tests.fixtures.ui_engine import SteppedSteward


class Recorder:
    """A TrayActions that writes down what the menu asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def toggle_model(self, name: str, command: str) -> None:
        self.calls.append(("model", name, command))

    def set_auto_evict(self, on: bool) -> None:
        self.calls.append(("auto_evict", str(on)))

    def set_auto_pause_for_gaming(self, on: bool) -> None:
        self.calls.append(("auto_pause_for_gaming", str(on)))

    def send(self, kind: str) -> None:
        self.calls.append(("send", kind))

    def reload_now(self) -> None:
        self.calls.append(("reload_now",))

    def show_dashboard(self) -> None:
        self.calls.append(("dashboard",))

    def show_settings(self) -> None:
        self.calls.append(("settings",))

    def show_models(self) -> None:
        self.calls.append(("models",))

    def quit(self) -> None:
        self.calls.append(("quit",))


def entries(menu: QMenu) -> list[str]:
    out = []
    for action in menu.actions():
        if action.isSeparator():
            out.append("---")
            continue
        mark = ("[x] " if action.isChecked() else "[ ] ") if action.isCheckable() else ""
        disabled = "" if action.isEnabled() else " (disabled)"
        out.append(f"{mark}{action.text()}{disabled}")
    return out


def action(menu: QMenu, text_start: str) -> Any:
    return next(a for a in menu.actions() if a.text().startswith(text_start))


def test_menu_is_built_from_the_snapshot(qtbot: Any) -> None:
    models = (
        snaps.model(ModelState.RESIDENT, name="llama-8b"),
        snaps.model(ModelState.EVICTED, name="qwen-14b"),
    )
    view = present(
        snaps.snapshot("active", models=models), Settings(auto_evict=True, auto_pause_for_gaming=False)
    )
    menu = QMenu()
    fill_menu(menu, view, Recorder())
    assert entries(menu) == [
        "Models resident (disabled)",  # one state line; the GPUs are in the tooltip and the popup
        "---",
        "[x] llama-8b: resident (3.0 GiB)",
        "[ ] qwen-14b: evicted (3.0 GiB)",
        "---",
        f"[x] {AUTO_EVICT_TEXT}",
        f"[ ] {AUTO_PAUSE_TEXT}",
        "---",
        "Pause",
        "Reload now",  # qwen-14b is out
        "Evict now",
        "---",
        "Dashboard...",
        "Settings...",
        "---",
        "Quit",
    ]


def test_menu_entries_call_the_actions(qtbot: Any) -> None:
    models = (
        snaps.model(ModelState.RESIDENT, name="llama-8b"),
        snaps.model(ModelState.EVICTED, name="qwen-14b"),
    )
    view = present(snaps.snapshot("paused", models=models, paused=True), Settings())
    menu, recorder = QMenu(), Recorder()
    fill_menu(menu, view, recorder)
    assert not any(a.text() == "Reload now" for a in menu.actions())  # paused: Resume is the way back
    for text in ("llama-8b", "qwen-14b", AUTO_EVICT_TEXT, AUTO_PAUSE_TEXT, "Resume", "Evict now"):
        action(menu, text).trigger()
    for text in ("Dashboard...", "Settings...", "Quit"):
        action(menu, text).trigger()
    fill_menu(menu, present(snaps.snapshot("cooldown", models=models), Settings()), recorder)
    action(menu, "Reload now").trigger()
    assert recorder.calls == [
        ("model", "llama-8b", "unload"),
        ("model", "qwen-14b", "load"),
        ("auto_evict", "False"),
        ("auto_pause_for_gaming", "False"),
        ("send", "resume"),
        ("send", "evict_now"),
        ("dashboard",),
        ("settings",),
        ("quit",),
        ("reload_now",),
    ]


def test_with_no_model_the_menu_offers_to_add_one(qtbot: Any) -> None:
    menu, recorder = QMenu(), Recorder()
    fill_menu(menu, present(snaps.snapshot("idle", models=()), Settings()), recorder)
    action(menu, ADD_MODEL_TEXT).trigger()
    assert recorder.calls == [("models",)]
    fill_menu(menu, present(snaps.snapshot("active"), Settings()), recorder)
    assert not any(a.text() == ADD_MODEL_TEXT for a in menu.actions()), "only while there is none"


def test_evict_now_is_disabled_when_nothing_is_held(qtbot: Any) -> None:
    view = present(snaps.snapshot("idle", models=(snaps.model(ModelState.UNLOADED),)), Settings())
    menu = QMenu()
    fill_menu(menu, view, Recorder())
    assert not action(menu, "Evict now").isEnabled()


def test_every_state_icon_loads() -> None:
    for name in ("resident", "evicted-for-game", "paused", "no-gpu", "error", "idle"):
        icon = state_icon(name)
        image = icon.pixmap(32, 32).toImage()
        assert not image.isNull()
        assert any(image.pixelColor(x, y).alpha() > 0 for x in range(32) for y in range(32))


def make_app(qtbot: Any, sim_runtime: Any, scenario_clock: Any, config_path: Path) -> tuple[StewardApp, Any]:
    config.ensure_default_config(config_path)
    settings = config.load_settings(config_path)
    sim_runtime.steward.update_settings(settings)
    stepped = SteppedSteward(sim_runtime.steward, scenario_clock, poll_s=0.02)
    worker = StewardWorker(stepped)
    app = StewardApp(worker, settings, config_path, notices=["Simulation: game-launch"], tray_available=False)
    qtbot.addWidget(app.dashboard)
    return app, stepped


def test_toggles_persist_to_the_file_and_reach_the_engine(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    app, stepped = make_app(qtbot, sim_runtime, scenario_clock, path)
    before = path.read_text()
    try:
        app.start()
        qtbot.waitUntil(lambda: app.snapshot is not None, timeout=3000)
        app.tray.rebuild_menu()  # as aboutToShow does
        action(app.tray.menu, AUTO_PAUSE_TEXT).trigger()
        assert "auto_pause_for_gaming = false" in path.read_text()  # at once, before the engine hears of it
        assert config.load_settings(path).auto_pause_for_gaming is False
        qtbot.waitUntil(lambda: stepped.steward.settings.auto_pause_for_gaming is False, timeout=3000)
        assert before.count("#") == path.read_text().count("#")  # comments kept
        app.tray.rebuild_menu()
        assert not action(app.tray.menu, AUTO_PAUSE_TEXT).isChecked()
    finally:
        app.shutdown()


def test_without_a_tray_the_dashboard_opens_and_says_why(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    app, _ = make_app(qtbot, sim_runtime, scenario_clock, tmp_path / "config.toml")
    try:
        app.start()
        assert app.dashboard.isVisible()
        assert NO_TRAY_NOTICE in app.dashboard.notice.text()
        assert "Simulation: game-launch" in app.dashboard.notice.text()
        qtbot.waitUntil(lambda: app.snapshot is not None and app.snapshot.tick >= 3, timeout=5000)
        app.render()
        assert app.dashboard.headline.text() == "● Models resident"
        assert app.tray.icon_name == "resident"
        rows = app.dashboard.table_text(app.dashboard.models)
        assert rows[0][:3] == ["llama-3.1-8b-instruct-q8_0", "0", "resident"]
        processes = app.dashboard.table_text(app.dashboard.processes)
        assert ["Xorg", "1201", "0"] in [r[:3] for r in processes]
        assert any(
            "llama-3.1-8b-instruct-q8_0 resident on GPU 0" in line for line in app.dashboard.event_lines()
        )
        assert "ours" in app.dashboard.gauges[0].describe()
        app.dashboard.grab()  # paints every widget once (gauges, timeline) without error
    finally:
        app.shutdown()


def test_render_is_throttled_while_only_the_tray_shows(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    app, _ = make_app(qtbot, sim_runtime, scenario_clock, tmp_path / "config.toml")
    app.tray_available = True  # no window open: at most one render a second (plus one per state change)
    try:
        app.start()
        ticks_before = app.worker.ticks
        qtbot.wait(1500)
        ticks = app.worker.ticks - ticks_before
        assert ticks > 20  # the engine ticked every 20 ms ...
        assert app.renders <= 6  # ... but the view was rebuilt only on state changes and once a second
    finally:
        app.shutdown()


def test_manage_it_on_a_found_app_saves_the_entry_and_applies_it(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    from app.core import events as ev

    path = tmp_path / "config.toml"
    app, stepped = make_app(qtbot, sim_runtime, scenario_clock, path)
    try:
        app.start()
        qtbot.waitUntil(lambda: app.snapshot is not None, timeout=3000)
        found = ev.AppFound(
            at=0, server_kind="comfyui", display_name="ComfyUI", url="http://127.0.0.1:8188", port=8188
        )
        app.on_notification_action("manage_app:comfyui http://127.0.0.1:8188", found)
        assert 'kind = "comfyui"' in path.read_text() and "#" in path.read_text()  # comments kept
        qtbot.waitUntil(
            lambda: [s.kind for s in stepped.steward.settings.servers] == ["comfyui"], timeout=3000
        )
    finally:
        app.shutdown()


def test_freeze_it_while_i_game_writes_a_freeze_entry_for_the_executable(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    from app.core import events as ev

    path = tmp_path / "config.toml"
    app, stepped = make_app(qtbot, sim_runtime, scenario_clock, path)
    try:
        app.start()
        qtbot.waitUntil(lambda: app.snapshot is not None, timeout=3000)
        event = ev.ModelsEvicted(
            at=0, gpu=0, models=("m",), reason="pressure", trigger="blender (pid 77) grew 3.1 GiB",
            freed_bytes=None, trigger_exe="blender",
        )  # fmt: skip
        app.on_notification_action("freeze_app:blender", event)
        assert 'kind = "freeze"' in path.read_text() and 'match = "blender"' in path.read_text()
        qtbot.waitUntil(
            lambda: [(s.kind, s.match) for s in stepped.steward.settings.servers] == [("freeze", "blender")],
            timeout=3000,
        )
    finally:
        app.shutdown()


def test_the_dashboards_process_menu_freezes_a_foreign_app_while_gaming(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    from app.ui.presenter import ProcessRow

    path = tmp_path / "config.toml"
    app, stepped = make_app(qtbot, sim_runtime, scenario_clock, path)
    try:
        app.start()
        qtbot.waitUntil(lambda: app.snapshot is not None, timeout=3000)
        app.dashboard._process_rows = [
            ProcessRow(gpu=0, pid=1201, name="Xorg", role="desktop", vram_text="180 MiB", used_bytes=1),
            ProcessRow(gpu=0, pid=77, name="/usr/bin/blender", role="other", vram_text="3 GiB", used_bytes=3),
        ]
        assert app.dashboard.process_menu(0).actions() == [], "the desktop is never offered"
        (freeze,) = app.dashboard.process_menu(1).actions()
        assert freeze.text() == "Freeze blender while I game"
        freeze.trigger()
        assert 'kind = "freeze"' in path.read_text() and 'match = "blender"' in path.read_text()
        qtbot.waitUntil(
            lambda: [s.match for s in stepped.steward.settings.servers] == ["blender"], timeout=3000
        )
    finally:
        app.shutdown()
