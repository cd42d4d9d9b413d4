"""The tray app's notification wiring (Qt offscreen, real engine on a simulated GPU, real router): engine
events become notifications, and each button, pressed from a foreign thread as a notification server's
callback would be, lands on the GUI thread and does what it says."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from app.core import config
from app.core import events as ev
from app.core.config import AppRule
from app.core.notify.notifier import LogNotifier
from app.ui.application import GuiNotifications, StewardApp
from app.ui.worker import StewardWorker, runtime_services_stopper
from tests.fixtures.ui_engine import SteppedSteward

GAME = ev.ModelsEvicted(
    at=1.0,
    gpu=0,
    models=("llama-3.1-8b-instruct-q8_0",),
    reason="game",
    trigger="Cyberpunk 2077",
    freed_bytes=8_600_000_000,
    trigger_exe="cyberpunk2077",
)


def confirmation_event(stepped: Any) -> ev.Event:
    return next(e for e in stepped.steward.snapshot.recent_events if isinstance(e, ev.AppRuleAdded))


def press(notifications: GuiNotifications, key: str, event: ev.Event) -> None:
    """What desktop-notifier does when a button is pressed: call back on its own (asyncio) thread."""
    thread = threading.Thread(target=notifications.action.emit, args=(key, event))
    thread.start()
    thread.join(5)


def test_notification_buttons_reach_the_engine_the_dashboard_and_the_settings(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    config.ensure_default_config(path)
    settings = config.load_settings(path)
    sim_runtime.steward.update_settings(settings)
    stepped = SteppedSteward(sim_runtime.steward, scenario_clock, poll_s=0.02)
    assert sim_runtime.aio is None  # built without the API ...
    notifications = GuiNotifications(sim_runtime, backends=[LogNotifier()])
    assert sim_runtime.aio is not None and sim_runtime.aio.running  # ... so the notifier started the loop
    worker = StewardWorker(stepped, stop_services=runtime_services_stopper(sim_runtime))
    app = StewardApp(
        worker,
        settings,
        path,
        welcome="Welcome to VRAM Steward.",
        notifications=notifications,
        tray_available=False,
    )
    qtbot.addWidget(app.dashboard)
    ignored_on: list[threading.Thread] = []
    real_ignore = app.ignore_app

    def ignore_app(match: str, name: str = "") -> None:
        ignored_on.append(threading.current_thread())
        real_ignore(match, name)

    app.ignore_app = ignore_app  # type: ignore[method-assign]
    try:
        app.start()
        assert "Welcome to VRAM Steward." in app.dashboard.notice.text()

        # An engine event becomes a notification (through the log backend here).
        worker.engine_event.emit(GAME)
        qtbot.waitUntil(lambda: len(notifications.router.deliveries) == 1, timeout=5000)
        delivery = notifications.router.deliveries[0]
        assert (delivery.backend, delivery.text.title) == (
            "log",
            "Cyberpunk 2077 started: freed 8.0 GiB (1 model)",  # 8.6e9 bytes
        )
        assert [a.key for a in delivery.text.actions] == ["resume", "ignore_app:cyberpunk2077", "show"]

        # "Resume now" becomes the engine's resume command (here it ends a pause).
        app.send("pause")
        qtbot.waitUntil(lambda: app.snapshot is not None and app.snapshot.paused, timeout=5000)
        press(notifications, "resume", GAME)
        qtbot.waitUntil(lambda: not app.snapshot.paused, timeout=5000)

        # "Open dashboard".
        app.dashboard.hide()
        press(notifications, "show", GAME)
        qtbot.waitUntil(app.dashboard.isVisible, timeout=5000)

        # "Always ignore this app": the executable's rule in the file, in the app, in the engine (through its
        # door, recorded as AppRuleAdded); handled on the GUI thread; the confirmation offers Undo.
        press(notifications, "ignore_app:cyberpunk2077", GAME)
        rule = AppRule(match="cyberpunk2077", action="ignore")
        qtbot.waitUntil(lambda: rule in app.settings.app_rules, timeout=5000)
        assert ignored_on == [threading.main_thread()]
        assert config.load_settings(path).app_rules == (rule,)
        qtbot.waitUntil(lambda: rule in stepped.steward.settings.app_rules, timeout=5000)
        qtbot.waitUntil(
            lambda: any(
                d.text.title == "Cyberpunk 2077 will be ignored" for d in notifications.router.deliveries
            ),
            timeout=5000,
        )
        confirmation = next(d for d in notifications.router.deliveries if "ignored" in d.text.title)
        assert next(a.key for a in confirmation.text.actions) == "remove_rule:cyberpunk2077"
        assert app.rules_view.rule_lines() and "cyberpunk2077" in app.rules_view.rule_lines()[0]
        added = [e for e in stepped.steward.snapshot.recent_events if isinstance(e, ev.AppRuleAdded)]
        assert [(e.match, e.name) for e in added] == [("cyberpunk2077", "Cyberpunk 2077")]

        # Undo: the rule leaves the file, the app, the engine and the rules list.
        press(notifications, "remove_rule:cyberpunk2077", confirmation_event(stepped))
        qtbot.waitUntil(lambda: not stepped.steward.settings.app_rules, timeout=5000)
        assert config.load_settings(path).app_rules == () and app.settings.app_rules == ()
        assert app.rules_view.rule_lines() == []
    finally:
        app.shutdown()
    # Ordered shutdown closed the router and stopped the loop it ran on.
    assert not sim_runtime.aio.running
    delivered = len(notifications.router.deliveries)
    worker.engine_event.emit(GAME)  # after Quit nothing is notified any more
    notifications.router.handle(GAME)
    assert len(notifications.router.deliveries) == delivered


def test_notifications_off_in_the_settings_are_off_in_the_app(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("schema_version = 2\nnotifications = false\n")
    settings = config.load_settings(path)
    sim_runtime.settings = settings
    notifications = GuiNotifications(sim_runtime, backends=[LogNotifier()])
    worker = StewardWorker(
        SteppedSteward(sim_runtime.steward, scenario_clock),
        stop_services=runtime_services_stopper(sim_runtime),
    )
    app = StewardApp(worker, settings, path, notifications=notifications, tray_available=False)
    qtbot.addWidget(app.dashboard)
    try:
        app.start()
        worker.engine_event.emit(GAME)
        assert notifications.router.wait_idle(2.0)
        assert not notifications.router.deliveries  # the event was dropped: notifications are off
        # The settings dialog turns them on: the router follows.
        app.apply_settings(config.update_settings(path, notifications=True))
        worker.engine_event.emit(GAME)
        qtbot.waitUntil(lambda: len(notifications.router.deliveries) == 1, timeout=5000)
    finally:
        app.shutdown()
