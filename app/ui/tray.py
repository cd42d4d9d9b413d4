"""The tray icon: an icon per state, a tooltip with VRAM used and free per GPU, a menu rebuilt from the latest
view each time it opens (as Vorta does), and a compact popup on left click."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from PySide6.QtCore import QObject, QPointF, QRectF, Qt
from PySide6.QtGui import QAction, QColor, QCursor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.core.resources import STATE_ICONS, state_icon_file
from app.ui.presenter import TrayView

logger = logging.getLogger(__name__)

ICON_NAMES = STATE_ICONS
AUTO_EVICT_TEXT = "Auto-evict when other apps need VRAM"
AUTO_PAUSE_TEXT = "Auto-pause for gaming"


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

    def show_dashboard(self) -> None: ...

    def show_settings(self) -> None: ...

    def freeze_while_gaming(self, executable: str) -> None: ...  # a `kind = "freeze"` entry for it

    def quit(self) -> None: ...


def fill_menu(menu: QMenu, view: TrayView, actions: TrayActions) -> None:
    """Rebuild `menu` from `view`. Every entry is a real QAction, so tests trigger them as a user would."""
    menu.clear()
    headline = menu.addAction(view.title)
    headline.setEnabled(False)
    for note in view.notes:
        menu.addAction(note).setEnabled(False)
    for gpu in view.gpus:
        menu.addAction(gpu.status_line).setEnabled(False)
    if view.models:
        menu.addSeparator()
        for model in view.models:
            entry = menu.addAction(model.menu_text)
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
    evict_now = menu.addAction("Evict now")
    evict_now.setEnabled(view.evict_enabled)
    evict_now.triggered.connect(lambda _=False: actions.send("evict_now"))
    menu.addSeparator()
    menu.addAction("Dashboard...").triggered.connect(lambda _=False: actions.show_dashboard())
    menu.addAction("Settings...").triggered.connect(lambda _=False: actions.show_settings())
    menu.addSeparator()
    menu.addAction("Quit").triggered.connect(lambda _=False: actions.quit())


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
        self.set_view(current_view())
        self.rebuild_menu()

    def show(self) -> None:
        self.icon.show()

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
