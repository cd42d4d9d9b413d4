"""The tray balloon notifier, driven by the real router from its asyncio thread (Qt offscreen)."""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QSystemTrayIcon
from pytestqt.qtbot import QtBot

from app.core import events as ev
from app.core.aio_thread import AsyncioThread
from app.core.events import Event
from app.core.notify.notifier import LogNotifier, NotificationRouter
from app.ui.balloon import TrayBalloonNotifier


class RecordingTrayIcon(QSystemTrayIcon):
    """A real QSystemTrayIcon that also keeps what it was asked to show, and on which thread."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[str, str, QSystemTrayIcon.MessageIcon, bool]] = []

    def showMessage(self, title, body, icon, msecs=10000):  # type: ignore[no-untyped-def, override]
        self.shown.append((title, body, icon, threading.current_thread() is threading.main_thread()))
        super().showMessage(title, body, icon, msecs)


def test_the_router_shows_a_balloon_on_the_gui_thread_and_a_click_asks_for_dashboard(qtbot: QtBot) -> None:
    icon = RecordingTrayIcon()
    balloon = TrayBalloonNotifier(icon)
    balloon._supported = True  # offscreen Qt has no system tray; the rest is the real path
    icon.show()
    aio = AsyncioThread()
    aio.start()
    actions: list[tuple[str, Event]] = []
    router = NotificationRouter(
        [LogNotifier()], aio=aio, clock=time.monotonic, on_action=lambda k, e: actions.append((k, e))
    )
    router.add_fallback(balloon)
    assert router.backend_names == ["tray-balloon", "log"]
    try:
        event = ev.GpuLost(at=0, gpu=0, message="fell off the bus")
        router.handle(event)
        qtbot.waitUntil(lambda: bool(icon.shown), timeout=5000)
        title, body, kind, on_gui_thread = icon.shown[0]
        assert title == "GPU 0 lost" and "fell off the bus" in body
        assert kind == QSystemTrayIcon.MessageIcon.Critical and on_gui_thread
        assert [d.backend for d in router.deliveries] == ["tray-balloon"]
        icon.messageClicked.emit()
        assert actions == [("show", event)]
    finally:
        router.close()
        aio.stop()


def test_without_a_visible_tray_the_balloon_is_not_available(qtbot: QtBot) -> None:
    icon = RecordingTrayIcon()
    balloon = TrayBalloonNotifier(icon)
    aio = AsyncioThread()
    aio.start()
    try:
        assert aio.run(balloon.available(), timeout_s=5) is False  # hidden (and offscreen has no tray)
        balloon._supported = True
        assert aio.run(balloon.available(), timeout_s=5) is False  # still hidden
        icon.show()
        assert aio.run(balloon.available(), timeout_s=5) is True
    finally:
        aio.stop()
