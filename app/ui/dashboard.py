"""The dashboard window: per-GPU gauges, the timeline, the process and model tables, recent events, and an
About box. Everything is reachable from the keyboard (buttons with mnemonics, tab order top to bottom)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app import __version__
from app.core import events as ev
from app.core import paths
from app.core.notify.messages import describe
from app.ui.gauges import VramGauge
from app.ui.presenter import ModelView, ProcessRow, TrayView
from app.ui.timeline import TimelineHistory, TimelineWidget
from app.ui.tray import TrayActions

MAX_EVENTS = 200
PROCESS_COLUMNS = ("Name", "PID", "GPU", "Role", "VRAM", "Learned")
MODEL_COLUMNS = ("Model", "GPU", "State", "Size", "Digest", "Last load", "Progress")


def about_text(config_file: Path | None) -> str:
    return (
        f"<b>VRAM Steward {__version__}</b><br>"
        "Keeps your local LLMs in VRAM while the GPU is free, and frees it when a game needs it.<br><br>"
        f"Config: {config_file or paths.default_config_file()}<br>"
        f"Log: {paths.log_file()}<br>"
        f"Audit log: {paths.audit_log_file()}"
    )


class Dashboard(QMainWindow):
    def __init__(
        self,
        actions: TrayActions,
        history: TimelineHistory,
        *,
        config_file: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._actions = actions
        self._config_file = config_file
        self._pause_command = "pause"
        self._model_rows: tuple[ModelView, ...] | None = None
        self._process_rows: list[ProcessRow] | None = None
        self.setWindowTitle("VRAM Steward")
        self.resize(760, 640)

        central = QWidget(self)
        layout = QVBoxLayout(central)
        self.headline = QLabel("Starting ...")
        font = self.headline.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.headline.setFont(font)
        layout.addWidget(self.headline)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setFrameShape(QLabel.Shape.StyledPanel)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()
        layout.addWidget(self.notice)

        self._gauge_box = QVBoxLayout()
        layout.addLayout(self._gauge_box)
        self.gauges: list[VramGauge] = []
        self.timeline = TimelineWidget(history, self)
        layout.addWidget(self.timeline, stretch=2)

        self.tabs = QTabWidget(self)
        self.processes = self._table(PROCESS_COLUMNS)
        self.processes.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.processes.customContextMenuRequested.connect(
            lambda pos: self.process_menu(self.processes.rowAt(pos.y())).exec(
                self.processes.viewport().mapToGlobal(pos)
            )
        )
        self.models = self._table(MODEL_COLUMNS)
        self.events = QListWidget(self)
        self.events.setAccessibleName("Recent events")
        self.tabs.addTab(self.processes, "&Processes")
        self.tabs.addTab(self.models, "&Models")
        self.tabs.addTab(self.events, "&Events")
        layout.addWidget(self.tabs, stretch=3)

        buttons = QHBoxLayout()
        self.pause_button = QPushButton("&Pause")
        self.pause_button.clicked.connect(lambda: actions.send(self._pause_command))
        self.evict_button = QPushButton("E&vict now")
        self.evict_button.clicked.connect(lambda: actions.send("evict_now"))
        settings_button = QPushButton("&Settings...")
        settings_button.clicked.connect(actions.show_settings)
        about_button = QPushButton("&About")
        about_button.clicked.connect(self.show_about)
        for b in (self.pause_button, self.evict_button, settings_button, about_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.setCentralWidget(central)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Close), self, self.close)

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

    def set_notice(self, text: str) -> None:
        """A standing notice: why there is no tray icon, that this is a simulation, ..."""
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def set_view(self, view: TrayView, processes: list[ProcessRow], *, timeline_changed: bool = True) -> None:
        """Show a view; widgets whose content did not change are left alone (repaints cost CPU)."""
        headline = f"● {view.title}"
        if headline != self.headline.text():
            self.headline.setText(headline)
            self.headline.setStyleSheet(f"color: {view.accent};")
        if view.tooltip != self.headline.toolTip():
            self.headline.setToolTip(view.tooltip)
        if view.pause_command != self._pause_command:
            self._pause_command = view.pause_command
            self.pause_button.setText("&Resume" if view.pause_command == "resume" else "&Pause")
        self.evict_button.setEnabled(view.evict_enabled)
        while len(self.gauges) < len(view.gpus):
            gauge = VramGauge(self)
            self.gauges.append(gauge)
            self._gauge_box.addWidget(gauge)
        for gauge, gpu in zip(self.gauges, view.gpus, strict=False):
            gauge.set_view(gpu)
        if view.models != self._model_rows:
            self._model_rows = view.models
            self._fill_models(view.models)
        if processes != self._process_rows:
            self._process_rows = processes
            self._fill_processes(processes)
        if timeline_changed:
            self.timeline.update()

    def add_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.LoadProgress):
            return
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

    def _fill_processes(self, rows: list[ProcessRow]) -> None:
        self.processes.setRowCount(len(rows))
        for r, row in enumerate(rows):
            cells = (row.name, str(row.pid), str(row.gpu), row.role, row.vram_text, row.learned_text)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c in (1, 2, 4):
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
