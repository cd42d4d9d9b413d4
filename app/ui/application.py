"""The tray application: wires the worker, the tray, the popup, the dashboard and the settings dialog.

It keeps the latest snapshot and renders it at most 4 times a second while a window is open, and once a
second while only the tray icon shows (a state change renders at once), so the idle cost stays low.

Notifications (`GuiNotifications`): the core's NotificationRouter is fed by `worker.engine_event`; it
delivers on the runtime's asyncio thread (desktop notification server, else the tray balloon, else the
log), and its buttons come back to the GUI thread as a queued signal: "resume" / "evict_now" become engine
commands, "show" opens the dashboard, "ignore_app:<match>" saves an ignore rule and applies it through the
engine's door (its confirmation offers Undo: "remove_rule:<match>"). A notification that reaches no one (no
notification server, a tray balloon with no tray host) becomes a notice in the tray and the dashboard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from app.core import config
from app.core import events as ev
from app.core.aio_thread import AsyncioThread
from app.core.engine.commands import ReloadNow
from app.core.errors import VramError
from app.core.notify import rules
from app.core.notify.notifier import (
    DesktopNotifierBackend,
    LogNotifier,
    NotificationRouter,
    Notifier,
    command_for_action,
)
from app.core.notify.text import (
    ACTION_SHOW,
    FREEZE_APP_PREFIX,
    IGNORE_APP_PREFIX,
    MANAGE_APP_PREFIX,
    REMOVE_RULE_PREFIX,
    rule_subject,
)
from app.core.settings import Settings
from app.ui import presenter
from app.ui.balloon import TrayBalloonNotifier
from app.ui.dashboard import Dashboard
from app.ui.models_dialog import ModelsDialog
from app.ui.popup import TrayPopup
from app.ui.presenter import Notice, TrayView
from app.ui.rules_view import RulesView
from app.ui.settings_dialog import SettingsDialog
from app.ui.timeline import TimelineHistory
from app.ui.tray import Tray
from app.ui.worker import StewardWorker

logger = logging.getLogger(__name__)

FAST_RENDER_MS = 250  # a window is open: at most 4 repaints a second (nvitop refreshes at 1-2 Hz)
SLOW_RENDER_MS = 1000  # only the tray icon: its tooltip once a second
NO_TRAY_NOTICE = (
    "No system tray was found on this desktop (GNOME needs the AppIndicator extension), so VRAM Steward "
    "runs in this window. Closing it quits VRAM Steward and releases its VRAM."
)


class GuiNotifications(QObject):
    """The tray app's NotificationRouter, and the way its buttons reach the GUI thread.

    Built before the worker (on the GUI thread, after the QApplication): `close()` belongs in the worker's
    `stop_services`, so it runs after the engine released its VRAM and before the asyncio loop stops.
    """

    action = Signal(str, object)  # key, Event: emitted on whichever thread the backend calls back on
    problem = Signal(object)  # str | None: why notifications are not shown (None: they are again)

    def __init__(
        self,
        runtime: Any,
        *,
        backends: Sequence[Notifier] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        settings: Settings = runtime.settings
        if runtime.aio is None:  # started without the API: the router needs the loop all the same
            aio = AsyncioThread()
            aio.start()
            runtime.aio = aio  # the worker's stop_services (runtime_services_stopper) stops it
        self.desktop = DesktopNotifierBackend() if backends is None else None
        self.router = NotificationRouter(
            list(backends) if backends is not None else [self.desktop, LogNotifier()],
            aio=runtime.aio,
            clock=clock or runtime.steward.clock,
            on_action=self.action.emit,
            coalesce_s=settings.notification_coalesce_secs,
            enabled=settings.notifications,
        )
        self.router.subscribe_problem(self.problem.emit)  # from the router's loop: queued to the GUI
        if not settings.notifications:
            logger.info("notifications are off (notifications = false)")

    def add_tray_balloon(self, icon: QSystemTrayIcon) -> TrayBalloonNotifier:
        """The fallback for a desktop with a tray but no notification server (an XEmbed tray draws its
        balloons; a StatusNotifierItem's go to the notification server, so there they need one)."""
        owner = self.desktop.name_has_owner if self.desktop is not None else None
        balloon = TrayBalloonNotifier(icon, name_has_owner=owner)
        self.router.add_fallback(balloon)
        return balloon

    def close(self) -> None:
        self.router.close()


class StewardApp(QObject):
    """Implements the tray's actions (TrayActions) and owns every window."""

    def __init__(
        self,
        worker: StewardWorker,
        settings: Settings,
        config_path: Path | None,
        *,
        notices: Sequence[Notice | str] = (),
        welcome: str | None = None,
        notifications: GuiNotifications | None = None,
        tray_available: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        settings_problems: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.worker = worker
        self.settings = settings
        self.config_path = config_path
        self.notices = tuple(presenter.as_notice(n) for n in notices)
        self.settings_problems = tuple(settings_problems)  # a broken settings file: running on defaults
        self.notification_problem: str | None = None
        self.settings_edit_problem: str | None = None  # an edit while running that does not load
        self.welcome = welcome  # the first-run notice: a dashboard banner, and the dashboard opens once
        self.notifications = notifications
        self.tray_available = (
            QSystemTrayIcon.isSystemTrayAvailable() if tray_available is None else tray_available
        )
        self.snapshot: Any = None
        self.view: TrayView = presenter.starting_view(
            settings, notices=self.current_notices(), error_icon=bool(self.settings_problems)
        )
        self.history = TimelineHistory(clock=clock)
        self.dashboard = Dashboard(
            self,
            self.history,
            config_file=config_path,
            manage_app=self.manage_found_app,
            show_models=self.show_models,
            reload_now=self.reload_now,
        )
        self.models_dialog: ModelsDialog | None = None
        self.popup = TrayPopup(self.show_dashboard, reload_now=self.reload_now)
        self.rules_view = RulesView(lambda: self.settings.app_rules, self.remove_rule)
        self.dashboard.set_rules_widget(self.rules_view)
        self.problems_window: Any = None  # SettingsProblemsWindow while the settings file is broken
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
        if notifications is not None:
            worker.engine_event.connect(notifications.router.handle)
            # the backends call back on their own threads: queued, so the action runs on the GUI thread
            notifications.action.connect(self.on_notification_action, Qt.ConnectionType.QueuedConnection)
            notifications.problem.connect(self._on_notification_problem, Qt.ConnectionType.QueuedConnection)
        self._show_notices()

    def current_notices(self) -> tuple[Notice, ...]:
        """The app's standing notices now: its own (simulation, API off), the settings file's problems,
        notifications that reach no one."""
        out = list(self.notices)
        if self.settings_problems:
            count = len(self.settings_problems)
            out.append(
                Notice(
                    f"Settings file broken: using defaults ({count} problem{'s' if count != 1 else ''})",
                    f"{self.config_path} does not load, so VRAM Steward runs with its default settings:\n"
                    + "\n".join(self.settings_problems),
                )
            )
        if self.notification_problem:
            out.append(Notice("Notifications are not shown", self.notification_problem))
        if self.settings_edit_problem:
            out.append(
                Notice(
                    "Settings edit not applied: the file has a problem",
                    f"{self.config_path or self.settings.source} was changed but does not load; VRAM Steward "
                    f"runs on with the settings it had:\n{self.settings_edit_problem}",
                )
            )
        return tuple(out)

    def _show_notices(self) -> None:
        """The dashboard's banner: the welcome and no-tray texts in full, and every notice's whole story."""
        notices = self.current_notices()
        short = "\n".join(n for n in (self.welcome, *(x.short for x in notices)) if n)
        if not self.tray_available:
            short = f"{NO_TRAY_NOTICE}\n{short}".strip()
        self.dashboard.set_notice(short, presenter.notice_detail(notices))

    def _on_notification_problem(self, problem: str | None) -> None:
        if self._shut_down or problem == self.notification_problem:
            return
        self.notification_problem = problem
        self._show_notices()
        self._refresh_view()

    def start(self) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.aboutToQuit.connect(self.shutdown)
            app.setQuitOnLastWindowClosed(not self.tray_available)
        if self.settings_problems:
            self.show_settings_problems()
        if self.tray_available:
            self.tray.show()
            if self.notifications is not None:
                self.notifications.add_tray_balloon(self.tray.icon)
            if self.welcome:
                self.dashboard.bring_to_front()  # first run: say hello once, then live in the tray
        else:
            logger.warning("no system tray: showing the dashboard as a window")
            self.dashboard.show()
        if self.welcome:
            logger.info("%s", self.welcome)
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
        self.view = presenter.present(
            self.snapshot,
            self.settings,
            notices=self.current_notices(),
            error_icon=bool(self.settings_problems),
        )
        sampled = self.history.add(self.view.gpus)
        self.tray.set_view(self.view)
        if self.dashboard.isVisible():
            self.dashboard.set_view(
                self.view,
                presenter.process_rows(self.snapshot),
                timeline_changed=sampled,
                snapshot=self.snapshot,
            )
        if self.popup.isVisible():
            self.popup.set_view(self.view)

    def _on_event(self, event: ev.Event) -> None:
        if self._shut_down:
            return
        self.dashboard.add_event(event)
        if isinstance(event, ev.ShowRequested):  # `vram-steward show`, POST /v1/show
            self.show_dashboard()
        elif isinstance(event, ev.ModelsEvicted):
            self.history.mark(event.gpu, "evicted")
        elif isinstance(event, ev.Resumed):
            self.history.mark(event.gpu, "resumed")

    def _on_error(self, text: str) -> None:
        logger.warning("%s", text)
        self.dashboard.add_event(ev.EngineError(at=0.0, wall_time=time.time(), where="ui", message=text))
        self.tray.show_message("VRAM Steward", text)

    def on_notification_action(self, key: str, event: ev.Event) -> None:
        """A notification's button (or a click on it), on the GUI thread."""
        if self._shut_down:
            return
        command = command_for_action(key, event)
        if command is not None:
            self.worker.submit(command.kind, gpu=command.gpu)
        elif key == ACTION_SHOW:
            self.show_dashboard()
        elif key.startswith(IGNORE_APP_PREFIX):
            match = key[len(IGNORE_APP_PREFIX) :]
            self.ignore_app(match, rule_subject(event, match))
        elif key.startswith(REMOVE_RULE_PREFIX):
            self.remove_rule(key[len(REMOVE_RULE_PREFIX) :])
        elif key.startswith(MANAGE_APP_PREFIX):
            self.manage_app(key[len(MANAGE_APP_PREFIX) :])
        elif key.startswith(FREEZE_APP_PREFIX):
            exe = key[len(FREEZE_APP_PREFIX) :]
            self.manage_app(f"freeze {exe}")
        else:
            logger.warning("unknown notification action %r", key)

    def manage_app(self, what: str) -> None:
        """ "Manage it" on an app discovery found ("<kind> <url>"): its `[[servers]]` entry is saved
        (comments kept) and applied at once (the engine makes its holder)."""
        from app.core.settings import ServerConfig

        kind, _, where = what.partition(" ")
        entry = (
            ServerConfig(kind=kind, name=where, match=where)  # "Freeze it while I game": by executable
            if kind == "freeze"
            else ServerConfig(kind=kind, url=where)
        )
        url = where
        try:
            new = config.add_server(self.config_path, entry)
        except (VramError, OSError) as exc:
            text = exc.user_message() if isinstance(exc, VramError) else str(exc)
            self._on_error(f"Could not save the entry for {kind} at {url}: {text}")
            return
        logger.info("%s at %s is managed from now on (saved in %s)", kind, url, new.source)
        self.apply_settings(new)

    def manage_found_app(self, kind: str, url: str) -> bool:
        """The dashboard's Manage on a found app: "Manage it"; True once its entry is in the settings."""
        self.manage_app(f"{kind} {url}")
        return any(s.kind == kind and s.url == url for s in self.settings.servers)

    def freeze_while_gaming(self, executable: str) -> None:
        """The dashboard's "Freeze <app> while I game": a `kind = "freeze"` entry for its executable."""
        self.manage_app(f"freeze {executable}")

    def ignore_app(self, match: str, name: str = "") -> None:
        """What "Always ignore this app" does: `match = "<exe>"` or `"steam:<AppId>"` saved in the settings
        file, applied through the engine's door (its AppRuleAdded event is the confirmation with Undo)."""
        self._change_rules(lambda: rules.add_rule(self.config_path, match, self._submit, name=name or match))

    def remove_rule(self, match: str) -> None:
        """Undo, or the dashboard's Remove: the rule leaves the file and the engine."""
        self._change_rules(lambda: rules.remove_rule(self.config_path, match, self._submit))

    def _submit(self, command: Any) -> Any:
        return self.worker.submit_command(command, "change the application rules")

    def _change_rules(self, change: Callable[[], Settings]) -> None:
        try:
            new = change()
        except (VramError, OSError) as exc:
            text = exc.user_message() if isinstance(exc, VramError) else str(exc)
            self._on_error(f"Could not change the application rules: {text}")
            return
        self.settings = new  # the engine has them through its door already: no second ApplySettings
        if self.notifications is not None:
            self.notifications.router.apply_settings(new)
        self.rules_view.refresh()
        self.render()

    def reload_now(self) -> None:
        """Evicted models come back now, without waiting for the cooldown (recorded as ReloadRequested)."""
        self.worker.submit_command(ReloadNow(), "reload the models")

    def show_settings_problems(self) -> None:
        """The window that names each problem of the broken settings file, with Open file / Check again."""
        from app.ui.settings_problems import SettingsProblemsWindow

        if self.problems_window is None:
            path = self.config_path or self.settings.source
            self.problems_window = SettingsProblemsWindow(Path(str(path)), self.settings_problems)
            self.problems_window.fixed.connect(self._settings_fixed)
        self.problems_window.show()
        self.problems_window.raise_()

    def settings_edit_failed(self, problem: str | None) -> None:
        """An edit of the settings file while running does not load (`problem`), or no longer (None): a
        standing notice in the tray and the dashboard, as the log alone would be silent."""
        if self._shut_down or problem == self.settings_edit_problem:
            return
        self.settings_edit_problem = problem
        self._show_notices()
        self._refresh_view()

    def settings_file_changed(self, settings: Settings) -> None:
        """The settings file was edited while running (`vram-steward config`, `discover --manage`, an editor)
        and loads: applied; after a broken start, that also turns the icon back from red."""
        if self.settings_problems:
            if self.problems_window is not None:
                self.problems_window.close()
            self._settings_fixed(settings)
        else:
            self.apply_settings(settings)

    def _settings_fixed(self, settings: Settings) -> None:
        """The settings file loads again: use it, and the icon turns back from red."""
        logger.info("the settings file %s loads again: using it", settings.source)
        self.settings_problems = ()
        self.problems_window = None
        self._show_notices()
        self.apply_settings(settings)
        self._refresh_view()

    def _refresh_view(self) -> None:
        """Show the notices and the icon now, also before the first snapshot."""
        if self.snapshot is None:
            self.view = presenter.starting_view(
                self.settings, notices=self.current_notices(), error_icon=bool(self.settings_problems)
            )
            self.tray.set_view(self.view)
        else:
            self.render()

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
        if self.notifications is not None:
            self.notifications.router.apply_settings(new)
        self.rules_view.refresh()
        self.render()

    def show_dashboard(self) -> None:
        if self.snapshot is not None:
            self.dashboard.set_view(self.view, presenter.process_rows(self.snapshot), snapshot=self.snapshot)
        self.dashboard.bring_to_front()

    def show_models(self) -> None:
        """The models dialog: add a model file, set priorities, remove; saved entries are applied at once."""
        if self.models_dialog is None or not self.models_dialog.isVisible():
            held = self.snapshot.models if self.snapshot is not None else ()
            self.models_dialog = ModelsDialog(
                self.settings,
                self.config_path,
                app_models=[m for m in held if m.holder != "builtin"],
                load_model=lambda name: self.toggle_model(name, "load"),
            )
            self.models_dialog.saved.connect(self.apply_settings)
        self.models_dialog.show()
        self.models_dialog.raise_()
        self.models_dialog.activateWindow()

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
        """Ordered: stop rendering and notifying, stop the engine (it releases VRAM), close the notifier,
        stop the API and the asyncio loop, end the thread."""
        if self._shut_down:
            return
        self._shut_down = True
        self._render_timer.stop()
        connections: list[tuple[Any, Any]] = [
            (self.worker.snapshot, self._on_snapshot),
            (self.worker.engine_event, self._on_event),
            (self.worker.error, self._on_error),
        ]
        if self.notifications is not None:
            connections.append((self.worker.engine_event, self.notifications.router.handle))
            connections.append((self.notifications.action, self.on_notification_action))
        for signal, slot in connections:
            signal.disconnect(slot)
        self.tray.hide()
        self.worker.stop_and_wait()
        if self.notifications is not None:
            self.notifications.close()  # already closed when it is in the worker's stop_services
        logger.info("VRAM Steward stopped; VRAM released")
