"""The dashboard with real widgets (Qt offscreen): the timeline's hover values, markers, legend and hour/day
switch; a card per GPU on a two-GPU machine; every holder with its state; the found apps' Manage button
writing the `[[servers]]` entry; the rules tab slot; the notice detail; dark palette; minimum size."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPalette
from PySide6.QtWidgets import QApplication, QLabel

from app.core import config
from app.core import events as ev
from app.core.config import Settings
from app.core.gpu.simulated import ManualClock
from app.core.holders import ModelState
from app.core.units import GiB
from app.ui.dashboard import PROCESS_COLUMNS, Dashboard
from app.ui.presenter import present, process_rows
from app.ui.timeline import DAY_STEP_S, TimelineHistory, gib_step
from tests.fixtures import ui_snapshots as snaps


class Actions:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, kind: str) -> None:
        self.sent.append(kind)

    def show_settings(self) -> None:
        self.sent.append("settings")

    def freeze_while_gaming(self, executable: str) -> None:
        self.sent.append(f"freeze {executable}")


def move_mouse(widget: Any, pos: QPoint) -> None:
    """A real mouse-move event through Qt's event delivery (QTest.mouseMove without a button pressed sends
    none on the offscreen platform)."""
    local = QPointF(pos)
    event = QMouseEvent(
        QEvent.Type.MouseMove,
        local,
        QPointF(widget.mapToGlobal(pos)),
        Qt.MouseButton.NoButton,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(widget, event)


def make_dashboard(qtbot: Any, clock: ManualClock, **kwargs: Any) -> tuple[Dashboard, TimelineHistory]:
    history = TimelineHistory(clock=clock)
    dashboard = Dashboard(Actions(), history, **kwargs)  # type: ignore[arg-type]
    qtbot.addWidget(dashboard)
    return dashboard, history


def feed(history: TimelineHistory, clock: ManualClock, seconds: int, **gpu: int) -> None:
    """One sample a second for `seconds` seconds of one GPU's VRAM split."""
    view = present(snaps.snapshot("active", gpus=(snaps.gpu(**gpu),)), Settings())
    for _ in range(seconds):
        clock.advance(1.0)
        history.add(view.gpus)


def test_timeline_hover_shows_the_values_under_the_mouse(qtbot: Any) -> None:
    clock = ManualClock(1000.0)
    dashboard, history = make_dashboard(qtbot, clock)
    feed(history, clock, 600, ours=3 * GiB, game=0)  # ten minutes with our model and no game
    feed(history, clock, 60, ours=0, game=6 * GiB)  # then a game, our model freed
    dashboard.show()
    timeline = dashboard.timeline
    _, area = timeline._bands()[0]
    near_now = QPoint(int(area.right()) - 2, int(area.center().y()))
    move_mouse(timeline, near_now)
    assert timeline.hover is not None
    text = timeline.hover.text()
    # a pixel is about 6 s of the hour: "now" or a few seconds ago
    assert re.match(
        r"GPU 0, (now|\d+ s ago): ours 0 B, desktop 512.0 MiB, games \+ other apps 6.0 GiB", text
    ), text
    assert timeline.toolTip() == text
    five_minutes_ago = QPointF(area.left() + area.width() * (1 - 300 / 3600), area.center().y())
    earlier = timeline.hover_at(five_minutes_ago)
    assert earlier is not None and earlier.text().startswith("GPU 0, 5 min ago: ours 3.0 GiB")
    two_hours_ago_is_empty = QPointF(area.left() + 2, area.center().y())
    assert timeline.hover_at(two_hours_ago_is_empty) is None  # nothing recorded then: no made-up value


def test_markers_legend_and_gib_axis_are_painted(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, history = make_dashboard(qtbot, clock)
    feed(history, clock, 120, ours=3 * GiB, game=0)
    history.mark(0, "evicted")
    feed(history, clock, 120, ours=0, game=6 * GiB)
    history.mark(0, "resumed")
    feed(history, clock, 30, ours=3 * GiB, game=0)
    assert [m.kind for m in history.markers] == ["evicted", "resumed"]
    feed(history, clock, 3600, ours=3 * GiB, game=0)  # an hour later the first marker left the hour view
    history.mark(0, "evicted")
    feed(history, clock, 60, ours=0, game=6 * GiB)
    timeline = dashboard.timeline
    _, area = timeline._bands()[0]
    (only,) = timeline.markers_in_view(0)
    assert only[0].kind == "evicted" and area.right() - 20 < only[1] < area.right()  # a minute before now
    timeline.set_range("day")
    assert [m.kind for m, _ in timeline.markers_in_view(0)] == ["evicted", "resumed", "evicted"]
    timeline.set_range("hour")
    assert dashboard.timeline.legend_items() == [
        "ours",
        "desktop",
        "games + other apps",
        "▼ freed",
        "▲ back",
    ]
    assert (
        gib_step(12 * GiB, 4) == 4 * GiB
        and gib_step(12 * GiB, 12) == GiB
        and gib_step(80 * GiB, 5) == 16 * GiB
    )
    dashboard.resize(dashboard.minimumSize())
    dashboard.show()
    image = dashboard.timeline.grab().toImage()
    assert not image.isNull()
    # the ours layer (solid green) and the games layer are both on screen
    colours = {
        image.pixelColor(x, y).name() for x in range(0, image.width(), 3) for y in range(0, image.height(), 3)
    }
    assert "#2e7d32" in colours


def test_day_view_keeps_a_day_at_one_sample_a_minute_and_the_switch_works(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, history = make_dashboard(qtbot, clock)
    feed(history, clock, 2 * 3600, ours=3 * GiB, game=0)  # two hours
    hour, day = history.series(0, "hour"), history.series(0, "day")
    assert 3590 <= len(hour) <= 3602  # the last hour, one a second
    assert hour[0].at >= clock() - 3600
    assert 115 <= len(day) <= 122  # two hours, one a minute
    assert all(b.at - a.at >= DAY_STEP_S for a, b in itertools.pairwise(day))
    dashboard.show()
    assert dashboard.timeline.range_name == "hour"
    dashboard.range_buttons["day"].click()
    assert dashboard.timeline.range_name == "day"
    assert dashboard.timeline.accessibleName() == "VRAM timeline, last day"
    _, area = dashboard.timeline._bands()[0]
    ninety_minutes_ago = QPointF(area.left() + area.width() * (1 - 5400 / 86400), area.center().y())
    hover = dashboard.timeline.hover_at(ninety_minutes_ago)
    assert hover is not None and hover.text().startswith("GPU 0, 1 h 30 min ago")
    dashboard.range_buttons["hour"].click()
    assert dashboard.timeline.range_name == "hour"
    same_spot = dashboard.timeline.hover_at(ninety_minutes_ago)  # near the right end of the hour now
    assert same_spot is not None and same_spot.ago_s < 600
    with pytest.raises(ValueError, match="expected one of hour, day"):
        dashboard.timeline.set_range("week")


def two_gpu_snapshot() -> Any:
    gpus = (snaps.gpu(index=0), snaps.gpu(index=1, ours=0, game=0))
    models = (
        snaps.model(ModelState.RESIDENT, name="llama-8b", gpu=0),
        snaps.model(ModelState.EVICTED, name="qwen-14b", gpu=1),
    )
    return snaps.snapshot("active", gpus=gpus, models=models)


def test_a_card_per_gpu_on_a_two_gpu_machine(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, history = make_dashboard(qtbot, clock)
    snapshot = two_gpu_snapshot()
    view = present(snapshot, Settings())
    dashboard.set_view(view, process_rows(snapshot), snapshot=snapshot)
    dashboard.show()
    cards = dashboard.cards.cards
    assert [c.title() for c in cards] == [
        "GPU 0 · NVIDIA GeForce RTX 3060",
        "GPU 1 · NVIDIA GeForce RTX 3060",
    ]
    assert cards[0].holds.text() == "Holds: llama-8b (resident)"
    assert cards[1].holds.text() == "Holds: qwen-14b (freed)"
    assert [g.view().index for g in dashboard.gauges if g.view()] == [0, 1]
    assert cards[0].x() == cards[1].x() and cards[0].y() < cards[1].y()  # one under the other, full width
    assert all("free" in c.gauge.describe() for c in cards)
    history.add(view.gpus)
    assert [gpu for gpu, _ in dashboard.timeline._bands()] == [0, 1]  # a timeline band per GPU too


def test_holders_view_shows_every_holder_and_its_state(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, _ = make_dashboard(qtbot, clock)
    models = (
        snaps.model(ModelState.RESIDENT, name="llama-8b"),
        snaps.model(ModelState.EVICTED, name="qwen-14b", holder="ollama", size_bytes=8 * GiB),
        snaps.model(ModelState.UNLOADED, name="sdxl", holder="comfyui", comes_back_on_next_use=True),
        snaps.model(ModelState.FROZEN, name="blender", holder="freeze", size_bytes=2 * GiB, gpu=0),
        snaps.model(ModelState.EVICTED, name="whisper.service", holder="systemd", size_bytes=GiB),
    )
    snapshot = snaps.snapshot("evicted_for_game", models=models)
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)
    rows = {r[0].strip(): r for r in dashboard.holders.rows()}
    assert rows["VRAM Steward's own models"][2] == "3.0 GiB"
    assert rows["llama-8b"][1:4] == ["resident", "3.0 GiB on GPU 0", ""]
    assert rows["qwen-14b"][1:3] == ["freed", "0 B on GPU 0"]
    assert rows["qwen-14b"][5] == "comes back when the GPU is free"
    assert rows["sdxl"][1] == "freed, comes back on next use"
    assert rows["blender"][1:4] == ["frozen in RAM", "0 B on GPU 0", "2.0 GiB"]
    assert rows["whisper.service"][1] == "stopped"
    titles = [r[0] for r in dashboard.holders.rows() if not r[0].startswith("  ")]
    assert titles == ["VRAM Steward's own models", "comfyui", "Frozen apps", "ollama", "systemd units"]


def test_process_table_has_role_app_and_learned_peak(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, _ = make_dashboard(qtbot, clock)
    snapshot = snaps.snapshot("active")
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)
    assert PROCESS_COLUMNS[3:5] == ("Role", "App")
    table = {r[0]: r for r in dashboard.table_text(dashboard.processes)}
    assert table["vram-steward-host"][3:5] == ["self", "VRAM Steward"]
    assert table["Xorg"][3:5] == ["desktop", "desktop"]
    assert table["Cyberpunk2077.exe"][3:5] == ["game", "Cyberpunk2077.exe"]


def test_manage_button_writes_the_servers_entry(qtbot: Any, tmp_path: Path) -> None:
    """The Found apps list's Manage goes through the application's own "Manage it" (StewardApp.manage_app)."""
    from app.core.wiring import build_runtime
    from app.ui.application import StewardApp
    from app.ui.worker import StewardWorker
    from tests.fixtures.ui_engine import SteppedSteward

    path = tmp_path / "config.toml"
    config.ensure_default_config(path)
    comments = path.read_text().count("#")
    clock = ManualClock(0.0)
    runtime = build_runtime(
        config.load_settings(path), simulate="game-launch", clock=clock, with_api=False, audit=False
    )
    stepped = SteppedSteward(runtime.steward, clock, poll_s=0.02)
    app = StewardApp(StewardWorker(stepped), config.load_settings(path), path, tray_available=False)
    qtbot.addWidget(app.dashboard)
    try:
        app.start()
        found = ev.AppFound(
            at=0.0, server_kind="comfyui", display_name="ComfyUI", url="http://127.0.0.1:8188", port=8188
        )
        app.worker.engine_event.emit(found)  # as the discovery thread's subscriber does (app/cli/gui.py)
        qtbot.waitUntil(lambda: bool(app.dashboard.found_apps.found), timeout=3000)
        assert app.dashboard.found_apps.lines() == ["ComfyUI on port 8188 (http://127.0.0.1:8188)"]
        button = app.dashboard.found_apps.button("comfyui", "http://127.0.0.1:8188")
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        saved = config.load_settings(path)
        assert [(s.kind, s.url) for s in saved.servers] == [("comfyui", "http://127.0.0.1:8188")]
        assert path.read_text().count("#") == comments  # the comments stay
        assert not button.isEnabled() and "managed from now on" in app.dashboard.found_apps.lines()[0]
        qtbot.waitUntil(lambda: len(stepped.steward.settings.servers) == 1, timeout=3000)  # applied
    finally:
        app.shutdown()
        runtime.steward.shutdown()


def test_rules_tab_takes_the_rules_widget_and_the_notice_detail_shows(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, _ = make_dashboard(qtbot, clock)
    rules = QLabel("ignore: blender")
    dashboard.set_rules_widget(rules)
    assert dashboard.rules_widget is rules
    assert dashboard.tabs.widget(4).isAncestorOf(rules)
    assert dashboard.tabs.tabText(4) == "R&ules"
    dashboard.show()
    dashboard.set_notice(
        "Control API off: port 8765 busy", "Port 8765 is taken by pid 77 (python3). Set api_port."
    )
    assert dashboard.notice.isVisible() and dashboard.notice_detail.isVisible()
    assert "pid 77" in dashboard.notice_detail.text()
    dashboard.set_notice("")
    assert not dashboard.notice.isVisible() and not dashboard.notice_detail.isVisible()


def test_countdown_in_the_headline_with_reload_now(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    reloads: list[str] = []
    dashboard, _ = make_dashboard(qtbot, clock, reload_now=lambda: reloads.append("reload"))
    dashboard.show()
    snapshot = snaps.snapshot("cooldown", models=(snaps.model(ModelState.EVICTED),))
    snapshot = dataclasses.replace(snapshot, resume_at=snapshot.telemetry.taken_at + 23.0)
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)
    assert dashboard.headline.text().endswith("· Models come back in 23 s")
    assert dashboard.reload_button.isVisible()
    qtbot.mouseClick(dashboard.reload_button, Qt.MouseButton.LeftButton)
    assert reloads == ["reload"]
    snapshot = snaps.snapshot("active")
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)
    assert not dashboard.reload_button.isVisible() and "come back" not in dashboard.headline.text()


def test_idle_without_models_offers_to_add_one(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    opened: list[str] = []
    dashboard, _ = make_dashboard(qtbot, clock, show_models=lambda: opened.append("models"))
    dashboard.show()
    snapshot = snaps.snapshot("idle", models=())
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)
    assert dashboard.add_model_button.isVisible()
    qtbot.mouseClick(dashboard.add_model_button, Qt.MouseButton.LeftButton)
    assert opened == ["models"]
    snapshot = snaps.snapshot("active")
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)
    assert not dashboard.add_model_button.isVisible()


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, colour in (
        (QPalette.ColorRole.Window, "#202124"),
        (QPalette.ColorRole.WindowText, "#e8eaed"),
        (QPalette.ColorRole.Base, "#121212"),
        (QPalette.ColorRole.Text, "#e8eaed"),
        (QPalette.ColorRole.Button, "#303134"),
        (QPalette.ColorRole.ButtonText, "#e8eaed"),
        (QPalette.ColorRole.Mid, "#5f6368"),
    ):
        palette.setColor(role, QColor(colour))
    return palette


def test_follows_a_dark_palette_and_is_usable_at_its_minimum_size(qtbot: Any) -> None:
    clock = ManualClock(0.0)
    dashboard, history = make_dashboard(qtbot, clock)
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    old = app.palette()
    snapshot = two_gpu_snapshot()
    dashboard.set_view(present(snapshot, Settings()), process_rows(snapshot), snapshot=snapshot)  # light
    app.setPalette(dark_palette())  # then the desktop turns dark
    app.processEvents()  # the palette reaches the widgets through an event
    try:
        feed(history, clock, 300, ours=3 * GiB, game=0)
        dashboard.resize(dashboard.minimumSize())
        dashboard.show()
        qtbot.waitExposed(dashboard)
        accent = QColor(dashboard.headline.styleSheet().split("color:")[1].strip(" ;"))
        assert accent.lightness() > QColor("#2e7d32").lightness() + 30  # the green headline, lightened
        assert dashboard.width() == dashboard.minimumWidth()
        assert dashboard.timeline.height() >= dashboard.timeline.minimumHeight()
        assert dashboard.tabs.height() >= 100
        assert all(c.gauge.height() > 0 and c.gauge.width() >= 200 for c in dashboard.cards.cards)
        image: QImage = dashboard.timeline.grab().toImage()
        # the plot's background is the palette's Base: dark, not a hard-coded white
        _, area = dashboard.timeline._bands()[0]
        background = image.pixelColor(int(area.left()) + 3, int(area.top()) + 30)
        assert background.lightness() < 80, background.name()
    finally:
        app.setPalette(old)


def test_a_manage_that_could_not_save_leaves_the_button_to_try_again(qtbot: Any) -> None:
    from app.ui.dashboard_parts import FoundAppsView

    answers = [False, True]
    asked: list[tuple[str, str]] = []

    def manage(kind: str, url: str) -> bool:
        asked.append((kind, url))
        return answers.pop(0)

    view = FoundAppsView(manage)
    qtbot.addWidget(view)
    view.add(
        ev.AppFound(
            at=0.0, server_kind="lm_studio", display_name="LM Studio", url="http://127.0.0.1:1234", port=1234
        )
    )
    button = view.button("lm_studio", "http://127.0.0.1:1234")
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert button.isEnabled() and view.lines() == [
        "LM Studio on port 1234 (http://127.0.0.1:1234): could not save its entry (see Events)"
    ]
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert not button.isEnabled() and view.lines() == [
        "LM Studio on port 1234 (http://127.0.0.1:1234): managed from now on (saved in the settings file)"
    ]
    assert asked == [("lm_studio", "http://127.0.0.1:1234")] * 2
