"""The tray application: wires the worker, the tray, the popup, the dashboard and the settings dialog.

It keeps the latest snapshot and renders it at most 10 times a second while a window is open, and once a
second while only the tray icon shows (a state change renders at once), so the idle cost stays low.
A notifier subscribes to `worker.engine_event` (every core Event, on the GUI thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from app.core import config
from app.core import events as ev
from app.core.config import Settings
from app.core.errors import VramError
from app.ui import presenter
from app.ui.dashboard import Dashboard
from app.ui.popup import TrayPopup
from app.ui.presenter import TrayView
from app.ui.settings_dialog import SettingsDialog
from app.ui.timeline import TimelineHistory
from app.ui.tray import Tray
from app.ui.worker import StewardWorker

logger = logging.getLogger(__name__)

FAST_RENDER_MS = 100  # a window is open: at most 10 repaints a second
SLOW_RENDER_MS = 1000  # only the tray icon: its tooltip once a second
NO_TRAY_NOTICE = (
    "No system tray was found on this desktop (GNOME needs the AppIndicator extension), so VRAM Steward "
    "runs in this window. Closing it quits VRAM Steward and releases its VRAM."
)


class StewardApp(QObject):
    """Implements the tray's actions (TrayActions) and owns every window."""

    def __init__(
        self,
        worker: StewardWorker,
        settings: Settings,
        config_path: Path | None,
        *,
        notices: Sequence[str] = (),
        tray_available: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.worker = worker
        self.settings = settings
        self.config_path = config_path
        self.notices = tuple(notices)
        self.tray_available = (
            QSystemTrayIcon.isSystemTrayAvailable() if tray_available is None else tray_available
        )
        self.snapshot: Any = None
        self.view: TrayView = presenter.starting_view(settings, notices=self.notices)
        self.history = TimelineHistory(clock=clock)
        self.dashboard = Dashboard(self, self.history, config_file=config_path)
        self.popup = TrayPopup(self.show_dashboard)
        self.tray = Tray(self, lambda: self.view, self.show_popup)
        self.settings_dialog: SettingsDialog | None = None
        self.renders = 0
        self._last_state = ""
        self._shut_down = False
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.timeout.connect(self.render)
        worker.snapshot.connect(self._on_snapshot)
        worker.engine_event.connect(self._on_event)
        worker.error.connect(self._on_error)
        notice = "\n".join(self.notices)
        if not self.tray_available:
            notice = f"{NO_TRAY_NOTICE}\n{notice}".strip()
        self.dashboard.set_notice(notice)

    def start(self) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.aboutToQuit.connect(self.shutdown)
            app.setQuitOnLastWindowClosed(not self.tray_available)
        if self.tray_available:
            self.tray.show()
        else:
            logger.warning("no system tray: showing the dashboard as a window")
            self.dashboard.show()
        self.worker.start_in_thread()

    # --- snapshots and events ------------------------------------------------------------------

    def _windows_open(self) -> bool:
        return self.dashboard.isVisible() or self.popup.isVisible() or self.tray.menu.isVisible()

    def _on_snapshot(self, snapshot: Any) -> None:
        if self._shut_down:  # a snapshot still queued when Quit was chosen
            return
        self.snapshot = snapshot
        if snapshot.state != self._last_state:
            self.render()
        elif not self._render_timer.isActive():
            self._render_timer.start(FAST_RENDER_MS if self._windows_open() else SLOW_RENDER_MS)

    def render(self) -> None:
        """Show the latest snapshot (called by the throttle timer, or at once on a state change)."""
        self._render_timer.stop()
        if self.snapshot is None or self._shut_down:
            return
        self.renders += 1
        self._last_state = self.snapshot.state
        self.view = presenter.present(self.snapshot, self.settings, notices=self.notices)
        sampled = self.history.add(self.view.gpus)
        self.tray.set_view(self.view)
        if self.dashboard.isVisible():
            self.dashboard.set_view(
                self.view, presenter.process_rows(self.snapshot), timeline_changed=sampled
            )
        if self.popup.isVisible():
            self.popup.set_view(self.view)

    def _on_event(self, event: ev.Event) -> None:
        if self._shut_down:
            return
        self.dashboard.add_event(event)
        if isinstance(event, ev.ModelsEvicted):
            self.history.mark(event.gpu, "evicted")
        elif isinstance(event, ev.Resumed):
            self.history.mark(event.gpu, "resumed")

    def _on_error(self, text: str) -> None:
        logger.warning("%s", text)
        self.dashboard.add_event(ev.EngineError(at=0.0, wall_time=time.time(), where="ui", message=text))
        self.tray.show_message("VRAM Steward", text)

    # --- TrayActions ---------------------------------------------------------------------------

    def toggle_model(self, name: str, command: str) -> None:
        self.worker.submit(command, model=name)

    def send(self, kind: str) -> None:
        self.worker.submit(kind)

    def set_auto_evict(self, on: bool) -> None:
        self._change_setting(auto_evict=on)

    def set_auto_pause_for_gaming(self, on: bool) -> None:
        self._change_setting(auto_pause_for_gaming=on)

    def _change_setting(self, **changes: Any) -> None:
        """Persist at once, then hand the new settings to the engine on its thread."""
        try:
            new = config.update_settings(self.config_path, **changes)
        except (VramError, OSError) as exc:
            text = exc.user_message() if isinstance(exc, VramError) else str(exc)
            self._on_error(f"Could not save the setting: {text}")
            return
        self.apply_settings(new)

    def apply_settings(self, new: Settings) -> None:
        self.settings = new
        self.worker.apply_settings(new)
        self.render()

    def show_dashboard(self) -> None:
        if self.snapshot is not None:
            self.dashboard.set_view(self.view, presenter.process_rows(self.snapshot))
        self.dashboard.bring_to_front()

    def show_popup(self) -> None:
        self.popup.set_view(self.view)
        geometry = self.tray.icon.geometry()
        anchor = geometry.center() if geometry.isValid() and not geometry.isEmpty() else QCursor.pos()
        self.popup.show_near(anchor)

    def show_settings(self) -> None:
        if self.settings_dialog is None or not self.settings_dialog.isVisible():
            self.settings_dialog = SettingsDialog(self.settings, self.config_path)
            self.settings_dialog.saved.connect(self.apply_settings)
        self.settings_dialog.show()
        self.settings_dialog.raise_()
        self.settings_dialog.activateWindow()

    def quit(self) -> None:
        self.shutdown()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def shutdown(self) -> None:
        """Ordered: stop rendering, stop the engine (it releases VRAM), stop the API, end the thread."""
        if self._shut_down:
            return
        self._shut_down = True
        self._render_timer.stop()
        for signal, slot in (
            (self.worker.snapshot, self._on_snapshot),
            (self.worker.engine_event, self._on_event),
            (self.worker.error, self._on_error),
        ):
            signal.disconnect(slot)
        self.tray.hide()
        self.worker.stop_and_wait()
        logger.info("VRAM Steward stopped; VRAM released")
