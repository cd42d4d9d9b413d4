"""The tray balloon: a Notifier (app.core.notify.notifier) for desktops with a system tray but no notification
server. Register it with `router.add_fallback(TrayBalloonNotifier(tray.icon))`.

The router calls it on its asyncio thread; the balloon itself is shown on the GUI thread through a queued
signal. Balloons have no buttons: clicking one asks for the notification's default action ("show").

An XEmbed tray draws its own balloons; a StatusNotifierItem's balloon is sent by Qt to the notification
server (org.freedesktop.Notifications), so where a StatusNotifierWatcher runs and no notification server
does, a balloon reaches no one: then the balloon is not available, and the router says so (never
"delivered").
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QSystemTrayIcon

from app.core.notify.text import NotificationText, Urgency

WATCHER_NAME = "org.kde.StatusNotifierWatcher"
NOTIFICATIONS_NAME = "org.freedesktop.Notifications"
NameHasOwner = Callable[[str], Awaitable[bool | None]]

_ICONS = {
    Urgency.LOW: QSystemTrayIcon.MessageIcon.Information,
    Urgency.NORMAL: QSystemTrayIcon.MessageIcon.Information,
    Urgency.CRITICAL: QSystemTrayIcon.MessageIcon.Critical,
}


class TrayBalloonNotifier(QObject):
    name = "tray-balloon"
    _show_requested = Signal(str, str, object)  # title, body, QSystemTrayIcon.MessageIcon

    def __init__(
        self, icon: QSystemTrayIcon, *, duration_ms: int = 8000, name_has_owner: NameHasOwner | None = None
    ) -> None:
        super().__init__()  # made on the GUI thread: queued signals land there
        self._icon = icon
        self._name_has_owner = name_has_owner  # asks the session bus (None: no bus to ask)
        self._duration_ms = duration_ms
        self._supported = QSystemTrayIcon.isSystemTrayAvailable() and QSystemTrayIcon.supportsMessages()
        self._lock = threading.Lock()
        self._on_click: Callable[[], None] | None = None
        self._show_requested.connect(self._show, Qt.ConnectionType.QueuedConnection)
        icon.messageClicked.connect(self._clicked)

    async def available(self) -> bool:
        if not (self._supported and self._icon.isVisible()):
            return False
        if self._name_has_owner is None:
            return True
        if not await self._name_has_owner(WATCHER_NAME):
            return True  # no StatusNotifierItem host: an XEmbed tray, which draws the balloon itself
        return bool(await self._name_has_owner(NOTIFICATIONS_NAME))

    async def send(self, text: NotificationText, on_action: Callable[[str], None]) -> bool:
        key = text.default_action
        with self._lock:  # the latest balloon replaces the one before, so its click is the one that counts
            self._on_click = (lambda: on_action(key)) if key is not None else None
        self._show_requested.emit(text.title, text.body, _ICONS[text.urgency])
        return True

    async def close(self) -> None:
        pass

    def _show(self, title: str, body: str, icon: QSystemTrayIcon.MessageIcon) -> None:
        self._icon.showMessage(title, body, icon, self._duration_ms)

    def _clicked(self) -> None:
        with self._lock:
            on_click = self._on_click
        if on_click is not None:
            on_click()
