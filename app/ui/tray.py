"""The tray icon: an icon per state, a tooltip with VRAM used and free per GPU, a short menu rebuilt from the
latest view each time it opens (as Vorta does), and a compact popup on left click.

The menu is short, as Syncthing's and Nextcloud's are: one state line, a short line per notice, the models
with their state, the two toggles, Pause/Resume, Reload now (while models wait), Evict now, Dashboard,
Settings, Quit. Every line is cut to MENU_TEXT_PX; the long stories live in the dashboard.

On a StatusNotifierItem desktop the icon is registered with org.kde.StatusNotifierWatcher; when the panel
restarts (a new owner of that name), the icon registers again (`WatcherFollower`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QTimer
from PySide6.QtGui import QAction, QColor, QCursor, QFontMetrics, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.core.resources import STATE_ICONS, state_icon_file
from app.ui.presenter import TrayView

logger = logging.getLogger(__name__)

ICON_NAMES = STATE_ICONS
AUTO_EVICT_TEXT = "Auto-evict when other apps need VRAM"
AUTO_PAUSE_TEXT = "Auto-pause for gaming"
RELOAD_NOW_TEXT = "Reload now"
ADD_MODEL_TEXT = "Add a model..."
MENU_TEXT_PX = 300  # no line of the menu is wider: the menu (checkbox, margins) stays well under 400 px
WATCHER_NAME = "org.kde.StatusNotifierWatcher"


_icon_cache: dict[str, QIcon] = {}


def state_icon(name: str) -> QIcon:
    """The SVG for a state; a shape drawn in code when the file or the SVG plugin is missing."""
    if name in _icon_cache:
        return _icon_cache[name]
    path = state_icon_file(name)
    icon = QIcon(str(path)) if path is not None else QIcon()
    if icon.isNull() or (not icon.availableSizes() and icon.pixmap(32, 32).isNull()):
        logger.debug("icon %s not loadable (%s); drawing a fallback", name, path or "no file")
        icon = _fallback_icon(name)
    _icon_cache[name] = icon
    return icon


def _fallback_icon(name: str) -> QIcon:
    pixmap = QPixmap(32, 32)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    colour = QColor({"resident": "#2e7d32", "paused": "#1565c0", "error": "#c62828"}.get(name, "#c77700"))
    p.setPen(colour)
    p.setBrush(colour if name in ("resident", "error") else Qt.BrushStyle.NoBrush)
    if name == "error":
        p.drawPolygon([QPointF(16, 2), QPointF(30, 29), QPointF(2, 29)])
    else:
        p.drawRoundedRect(QRectF(5, 5, 22, 22), 3, 3)
    p.end()
    return QIcon(pixmap)


class TrayActions(Protocol):
    """What the menu's entries do (the application controller implements it)."""

    def toggle_model(self, name: str, command: str) -> None: ...

    def set_auto_evict(self, on: bool) -> None: ...

    def set_auto_pause_for_gaming(self, on: bool) -> None: ...

    def send(self, kind: str) -> None: ...  # "pause" | "resume" | "evict_now"

    def reload_now(self) -> None: ...  # evicted models come back now, without waiting for the cooldown

    def show_dashboard(self) -> None: ...

    def show_settings(self) -> None: ...

    def show_models(self) -> None: ...  # the models dialog: add a model with a file picker

    def freeze_while_gaming(self, executable: str) -> None: ...  # a `kind = "freeze"` entry for it

    def quit(self) -> None: ...


def fill_menu(menu: QMenu, view: TrayView, actions: TrayActions) -> None:
    """Rebuild `menu` from `view`. Every entry is a real QAction, so tests trigger them as a user would."""
    menu.clear()
    fit = _fitter(menu)
    headline = menu.addAction(fit(view.wait_text or view.title))
    headline.setEnabled(False)
    for note in view.notes:
        menu.addAction(fit(note)).setEnabled(False)
    if not view.models:  # not a dead end: the way to the first model is one click
        menu.addSeparator()
        menu.addAction(ADD_MODEL_TEXT).triggered.connect(lambda _=False: actions.show_models())
    if view.models:
        menu.addSeparator()
        for model in view.models:
            entry = menu.addAction(fit(model.menu_text))
            entry.setCheckable(True)
            entry.setChecked(model.checked)
            entry.setToolTip(f"Click to {model.command} {model.name}")
            entry.triggered.connect(lambda _=False, n=model.name, c=model.command: actions.toggle_model(n, c))
    menu.addSeparator()
    evict = _toggle(menu, AUTO_EVICT_TEXT, view.auto_evict)
    evict.toggled.connect(actions.set_auto_evict)
    pause_games = _toggle(menu, AUTO_PAUSE_TEXT, view.auto_pause_for_gaming)
    pause_games.toggled.connect(actions.set_auto_pause_for_gaming)
    menu.addSeparator()
    pause = menu.addAction(view.pause_text)
    pause.triggered.connect(lambda _=False, k=view.pause_command: actions.send(k))
    if view.reload_enabled:
        menu.addAction(RELOAD_NOW_TEXT).triggered.connect(lambda _=False: actions.reload_now())
    evict_now = menu.addAction("Evict now")
    evict_now.setEnabled(view.evict_enabled)
    evict_now.triggered.connect(lambda _=False: actions.send("evict_now"))
    menu.addSeparator()
    menu.addAction("Dashboard...").triggered.connect(lambda _=False: actions.show_dashboard())
    menu.addAction("Settings...").triggered.connect(lambda _=False: actions.show_settings())
    menu.addSeparator()
    menu.addAction("Quit").triggered.connect(lambda _=False: actions.quit())


def _fitter(menu: QMenu) -> Callable[[str], str]:
    metrics = QFontMetrics(menu.font())
    return lambda text: metrics.elidedText(text, Qt.TextElideMode.ElideRight, MENU_TEXT_PX)


def _toggle(menu: QMenu, text: str, checked: bool) -> QAction:
    action = menu.addAction(text)
    action.setCheckable(True)
    action.setChecked(checked)
    return action


class Tray(QObject):
    """Owns the QSystemTrayIcon and its menu. `set_view()` is cheap when nothing visible changed."""

    def __init__(
        self, actions: TrayActions, current_view: Callable[[], TrayView], on_left_click: Callable[[], None]
    ) -> None:
        super().__init__()
        self._actions = actions
        self._current_view = current_view
        self._on_left_click = on_left_click
        self.icon = QSystemTrayIcon()
        self.menu = QMenu()
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self._icon_name = ""
        self._tooltip = ""
        self.registrations = 0  # how often the icon was (re-)registered with a tray host
        self.set_view(current_view())
        self.rebuild_menu()
        self.watcher = WatcherFollower(self.reregister)

    def show(self) -> None:
        self.icon.show()
        self.registrations += 1

    def reregister(self) -> None:
        """A new tray host (the panel restarted): register the icon with it again, as it was."""
        if not self.icon.isVisible():
            return
        logger.info("the tray host changed (%s has a new owner): registering the icon again", WATCHER_NAME)
        self.icon.hide()
        self.icon.show()
        self.registrations += 1

    def hide(self) -> None:
        self.icon.hide()

    def set_view(self, view: TrayView) -> None:
        if view.icon != self._icon_name:
            self._icon_name = view.icon
            self.icon.setIcon(state_icon(view.icon))
        if view.tooltip != self._tooltip:
            self._tooltip = view.tooltip
            self.icon.setToolTip(view.tooltip)

    @property
    def icon_name(self) -> str:
        return self._icon_name

    def rebuild_menu(self) -> None:
        fill_menu(self.menu, self._current_view(), self._actions)

    def show_message(self, title: str, text: str) -> None:
        if self.icon.isVisible() and QSystemTrayIcon.supportsMessages():
            self.icon.showMessage(title, text, state_icon(self._icon_name or "idle"), 8000)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger:
            self._on_left_click()

    @staticmethod
    def popup_anchor() -> QPointF:
        return QPointF(QCursor.pos())


class WatcherFollower(QObject):
    """Calls `on_new_host` when org.kde.StatusNotifierWatcher gets a new owner on the session bus (a panel
    that restarted forgets every icon). Without a session bus it does nothing."""

    def __init__(self, on_new_host: Callable[[], None], *, settle_ms: int = 300) -> None:
        super().__init__()
        self._on_new_host = on_new_host
        self._watcher: object | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(settle_ms)  # let the new watcher finish starting before registering
        self._timer.timeout.connect(self._on_new_host)
        try:
            from PySide6.QtDBus import QDBusConnection, QDBusServiceWatcher
        except ImportError:  # a Qt without QtDBus (not Linux): nothing to follow
            return
        bus = QDBusConnection.sessionBus()
        if not bus.isConnected():
            return
        watcher = QDBusServiceWatcher(
            WATCHER_NAME, bus, QDBusServiceWatcher.WatchModeFlag.WatchForRegistration, self
        )
        watcher.serviceRegistered.connect(lambda _name: self._timer.start())
        self._watcher = watcher
