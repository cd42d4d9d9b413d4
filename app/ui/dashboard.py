"""The dashboard window: a card per GPU, the timeline of the last hour or day, and tabs for every holder,
the processes, our models, the apps discovery found, the rules and the recent events; an About box.
Everything is reachable from the keyboard (buttons with mnemonics, tab order top to bottom), and it is
usable at its minimum size (the timeline and the tabs share the height through a splitter)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtGui import QColor, QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import __version__
from app.core import events as ev
from app.core import paths
from app.core.notify.messages import describe
from app.ui.dashboard_parts import FoundAppsView, GpuCards, HoldersView
from app.ui.dashboard_view import process_apps
from app.ui.gauges import VramGauge
from app.ui.presenter import ModelView, ProcessRow, TrayView
from app.ui.timeline import TimelineHistory, TimelineWidget
from app.ui.tray import TrayActions

if TYPE_CHECKING:
    from app.core.engine.steward import StewardSnapshot

MAX_EVENTS = 200
PROCESS_COLUMNS = ("Name", "PID", "GPU", "Role", "App", "VRAM", "Learned game peak")
MODEL_COLUMNS = ("Model", "GPU", "State", "Size", "Digest", "Last load", "Progress")


def about_text(config_file: Path | None) -> str:
    return (
        f"<b>VRAM Steward {__version__}</b><br>"
        "Keeps your local LLMs in VRAM while the GPU is free, and frees it when a game needs it.<br><br>"
        f"Config: {config_file or paths.default_config_file()}<br>"
        f"Log: {paths.log_file()}<br>"
        f"Audit log: {paths.audit_log_file()}"
    )


def readable_accent(accent: str, palette: QPalette) -> str:
    """The state's accent colour, lightened on a dark window so the headline stays readable."""
    colour = QColor(accent)
    if palette.color(QPalette.ColorRole.Window).lightness() < 128 and colour.lightness() < 140:
        colour = colour.lighter(170)
    return colour.name()


class Dashboard(QMainWindow):
    """The window behind the tray icon. `manage_app(kind, url)` saves a found app's `[[servers]]` entry (the
    application's "Manage it"); `show_models()` opens the models dialog; `reload_now()` ends a countdown
    before models come back. Each None where there is none."""

    MINIMUM_SIZE = QSize(600, 600)

    def __init__(
        self,
        actions: TrayActions,
        history: TimelineHistory,
        *,
        config_file: Path | None = None,
        manage_app: Callable[[str, str], bool | None] | None = None,
        show_models: Callable[[], None] | None = None,
        reload_now: Callable[[], None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._actions = actions
        self._config_file = config_file
        self._pause_command = "pause"
        self._model_rows: tuple[ModelView, ...] | None = None
        self._process_rows: list[ProcessRow] | None = None
        self._process_apps: list[str] = []
        self._shown: tuple[object, ...] = ()
        self._accent = ""
        self.setWindowTitle("VRAM Steward")
        self.setMinimumSize(self.MINIMUM_SIZE)
        self.resize(820, 720)

        central = QWidget(self)
        layout = QVBoxLayout(central)
        top = QHBoxLayout()
        self.headline = QLabel("Starting ...")
        font = self.headline.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.headline.setFont(font)
        top.addWidget(self.headline, 1)
        self.add_model_button = QPushButton("&Add a model...")
        self.add_model_button.setToolTip("Pick a model file (GGUF, safetensors, ...) to keep in VRAM")
        self.add_model_button.setEnabled(show_models is not None)
        if show_models is not None:
            self.add_model_button.clicked.connect(show_models)
        self.add_model_button.hide()  # shown while no model is configured: the way out of "Idle"
        top.addWidget(self.add_model_button)
        self.reload_button = QPushButton("&Reload now")
        self.reload_button.setToolTip("Bring the models back now instead of waiting for the countdown")
        self._can_reload = reload_now is not None
        if reload_now is not None:
            self.reload_button.clicked.connect(reload_now)
        self.reload_button.hide()  # while models are out and a countdown runs
        top.addWidget(self.reload_button)
        layout.addLayout(top)
        self.notice_box = QFrame(self)  # the short notice and its whole story, together
        self.notice_box.setFrameShape(QFrame.Shape.StyledPanel)
        notice_layout = QVBoxLayout(self.notice_box)
        notice_layout.setContentsMargins(6, 4, 6, 4)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        bold = self.notice.font()
        bold.setBold(True)
        self.notice.setFont(bold)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice_detail = QLabel()
        self.notice_detail.setWordWrap(True)
        self.notice_detail.setAccessibleName("Notice details")
        self.notice_detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        notice_layout.addWidget(self.notice)
        notice_layout.addWidget(self.notice_detail)
        self.notice_box.hide()
        layout.addWidget(self.notice_box)

        self.cards = GpuCards(self)
        self.gauges: list[VramGauge] = []
        layout.addWidget(self.cards)

        upper = QWidget()
        upper_layout = QVBoxLayout(upper)
        upper_layout.setContentsMargins(0, 0, 0, 0)
        self.timeline = TimelineWidget(history, self)
        ranges = QHBoxLayout()
        ranges.addWidget(QLabel("VRAM over the last"))
        self.range_buttons: dict[str, QToolButton] = {}
        group = QButtonGroup(self)
        for name, text in (("hour", "&hour"), ("day", "&day")):
            button = QToolButton()
            button.setText(text)
            button.setCheckable(True)
            button.setChecked(name == "hour")
            button.setAccessibleName(f"Show the last {name}")
            button.toggled.connect(lambda on, n=name: self._show_range(n) if on else None)
            group.addButton(button)
            ranges.addWidget(button)
            self.range_buttons[name] = button
        ranges.addStretch(1)
        upper_layout.addLayout(ranges)
        upper_layout.addWidget(self.timeline, 1)

        self.tabs = QTabWidget(self)
        self.holders = HoldersView(self)
        self.processes = self._table(PROCESS_COLUMNS)
        self.processes.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.processes.customContextMenuRequested.connect(
            lambda pos: self.process_menu(self.processes.rowAt(pos.y())).exec(
                self.processes.viewport().mapToGlobal(pos)
            )
        )
        self.models = self._table(MODEL_COLUMNS)
        models_page = QWidget()
        models_layout = QVBoxLayout(models_page)
        models_layout.setContentsMargins(0, 0, 0, 0)
        models_layout.addWidget(self.models)
        self.models_button = QPushButton("Add or remove &models...")
        self.models_button.setEnabled(show_models is not None)
        if show_models is not None:
            self.models_button.clicked.connect(show_models)
        models_row = QHBoxLayout()
        models_row.addWidget(self.models_button)
        models_row.addStretch(1)
        models_layout.addLayout(models_row)
        self.found_apps = FoundAppsView(manage_app, self)
        self.rules_page = QWidget()
        self._rules_layout = QVBoxLayout(self.rules_page)
        self.rules_widget: QWidget = QLabel("Application rules appear here.")
        self._rules_layout.addWidget(self.rules_widget)
        self.events = QListWidget(self)
        self.events.setAccessibleName("Recent events")
        self.tabs.addTab(self.holders, "&Holders")
        self.tabs.addTab(self.processes, "&Processes")
        self.tabs.addTab(models_page, "&Models")
        self.tabs.addTab(self.found_apps, "&Found apps")
        self.tabs.addTab(self.rules_page, "R&ules")
        self.tabs.addTab(self.events, "&Events")

        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(upper)
        splitter.addWidget(self.tabs)
        splitter.setChildrenCollapsible(False)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        layout.addWidget(splitter, 1)

        buttons = QHBoxLayout()
        self.pause_button = QPushButton("&Pause")
        self.pause_button.clicked.connect(lambda: actions.send(self._pause_command))
        self.evict_button = QPushButton("E&vict now")
        self.evict_button.clicked.connect(lambda: actions.send("evict_now"))
        settings_button = QPushButton("&Settings...")
        settings_button.clicked.connect(actions.show_settings)
        about_button = QPushButton("A&bout")
        about_button.clicked.connect(self.show_about)
        for b in (self.pause_button, self.evict_button, settings_button, about_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.setCentralWidget(central)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Close), self, self.close)

    def _colour_headline(self) -> None:
        self.headline.setStyleSheet(f"color: {readable_accent(self._accent, self.palette())};")

    def changeEvent(self, event: QEvent) -> None:
        """The desktop switched between light and dark: the headline's accent follows."""
        if event.type() == QEvent.Type.PaletteChange and self._accent:
            self._colour_headline()
        super().changeEvent(event)

    def _show_range(self, name: str) -> None:
        self.timeline.set_range(name)

    def set_rules_widget(self, widget: QWidget) -> None:
        """Put the rules list (app/ui/rules_view.py) in the Rules tab, in place of what was there."""
        self._rules_layout.removeWidget(self.rules_widget)
        self.rules_widget.deleteLater()
        self.rules_widget = widget
        self._rules_layout.addWidget(widget)

    @staticmethod
    def _table(columns: Sequence[str]) -> QTableWidget:
        table = QTableWidget(0, len(columns))
        table.setHorizontalHeaderLabels(list(columns))
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        return table

    # --- updates (the application throttles these) -------------------------------------------

    def set_notice(self, text: str, detail: str = "") -> None:
        """A standing notice (why there is no tray icon, that this is a simulation, ...) and its detail."""
        self.notice.setText(text)
        self.notice.setVisible(bool(text))
        self.set_notice_detail(detail)

    def set_notice_detail(self, detail: str) -> None:
        """The long form of the tray's short notices: what happened and what to do about it."""
        if detail != self.notice_detail.text():
            self.notice_detail.setText(detail)
        self.notice_detail.setVisible(bool(detail))
        self.notice_box.setVisible(bool(self.notice.text() or detail))

    def set_view(
        self,
        view: TrayView,
        processes: list[ProcessRow],
        *,
        timeline_changed: bool = True,
        snapshot: StewardSnapshot | None = None,
    ) -> None:
        """Show a view; widgets whose content did not change are left alone (repaints cost CPU). With the
        snapshot, the Holders view, the GPU cards' lines and the process table's App column are filled."""
        shown: tuple[object, ...] = (view, processes)
        if snapshot is not None:
            shown += (snapshot.models, snapshot.games)
        if shown == self._shown:  # the same picture (a new snapshot that changed nothing people see)
            if timeline_changed:
                self.timeline.refresh()
            return
        self._shown = shown
        headline = f"● {view.title}" + (f" · {view.wait_text}" if view.wait_text else "")
        if headline != self.headline.text():
            self.headline.setText(headline)
            self._accent = view.accent
            self._colour_headline()
        if view.tooltip != self.headline.toolTip():
            self.headline.setToolTip(view.tooltip)
        no_models = not view.models and view.state not in ("starting", "no_gpu", "error")
        if no_models != self.add_model_button.isVisibleTo(self):
            self.add_model_button.setVisible(no_models)
        if view.pause_command != self._pause_command:
            self._pause_command = view.pause_command
            self.pause_button.setText("&Resume" if view.pause_command == "resume" else "&Pause")
        self.evict_button.setEnabled(view.evict_enabled)
        reload_shown = view.reload_enabled and self._can_reload
        if reload_shown != self.reload_button.isVisibleTo(self):
            self.reload_button.setVisible(reload_shown)
        models = snapshot.models if snapshot is not None else ()
        self.cards.set_views(view.gpus, models)
        self.gauges = [card.gauge for card in self.cards.cards]
        if snapshot is not None:
            self.holders.set_models(snapshot.models)
        if view.models != self._model_rows:
            self._model_rows = view.models
            self._fill_models(view.models)
        apps = process_apps(snapshot, processes) if snapshot is not None else [""] * len(processes)
        if processes != self._process_rows or apps != self._process_apps:
            self._process_rows = processes
            self._process_apps = apps
            self._fill_processes(processes, apps)
        if timeline_changed:
            self.timeline.refresh()  # repaints when the new sample moves the plot by a pixel

    def add_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.LoadProgress):
            return
        if isinstance(event, ev.AppFound):
            self.found_apps.add(event)
        stamp = time.strftime("%H:%M:%S", time.localtime(event.wall_time or time.time()))
        severity = str(type(event).severity).upper()
        self.events.insertItem(0, f"{stamp}  {severity:<8} {describe(event)}")
        while self.events.count() > MAX_EVENTS:
            self.events.takeItem(self.events.count() - 1)

    def event_lines(self) -> list[str]:
        return [self.events.item(i).text() for i in range(self.events.count())]

    def process_menu(self, row: int) -> QMenu:
        """The process table's context menu for one row: a foreign app can be frozen while you game."""
        menu = QMenu(self)
        rows = self._process_rows or []
        if 0 <= row < len(rows) and rows[row].role in ("other", "game"):
            process = rows[row]
            exe = process.name.replace("\\", "/").rsplit("/", 1)[-1].split(" ")[0]
            action = menu.addAction(f"Freeze {exe} while I game")
            action.triggered.connect(lambda: self._actions.freeze_while_gaming(exe))
        return menu

    def _fill_processes(self, rows: list[ProcessRow], apps: list[str]) -> None:
        self.processes.setRowCount(len(rows))
        for r, (row, app) in enumerate(zip(rows, apps, strict=True)):
            cells = (row.name, str(row.pid), str(row.gpu), row.role, app, row.vram_text, row.learned_text)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c in (1, 2, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.processes.setItem(r, c, item)

    def _fill_models(self, models: tuple[ModelView, ...]) -> None:
        self.models.setRowCount(len(models))
        for r, m in enumerate(models):
            cells = (m.name, str(m.gpu), m.state, m.size_text, m.digest_short or "—", m.load_text or "—")
            for c, text in enumerate(cells):
                self.models.setItem(r, c, QTableWidgetItem(text))
            if m.progress_percent is not None:
                bar = QProgressBar()
                bar.setValue(m.progress_percent)
                bar.setFormat("loading %p %")
                self.models.setCellWidget(r, 6, bar)
            else:
                self.models.removeCellWidget(r, 6)
                self.models.setItem(r, 6, QTableWidgetItem(""))

    def table_text(self, table: QTableWidget) -> list[list[str]]:
        """The cells as text (tests, accessibility checks)."""
        out = []
        for r in range(table.rowCount()):
            row = []
            for c in range(table.columnCount()):
                item = table.item(r, c)
                widget = table.cellWidget(r, c)
                if isinstance(widget, QProgressBar):
                    row.append(widget.text())
                else:
                    row.append(item.text() if item is not None else "")
            out.append(row)
        return out

    def show_about(self) -> None:
        QMessageBox.about(self, "About VRAM Steward", about_text(self._config_file))

    def bring_to_front(self) -> None:
        self.show()
        self.setWindowState(
            (self.windowState() & ~Qt.WindowState.WindowMinimized) | Qt.WindowState.WindowActive
        )
        self.raise_()
        self.activateWindow()
