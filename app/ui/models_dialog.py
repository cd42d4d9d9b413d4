"""The models dialog: the `[[models]]` entries VRAM Steward keeps in VRAM, without editing TOML.

Add a model file (GGUF, safetensors, any file), set its GPU and priority, remove one. Saving writes the
entries through `config.update_settings()` (the comment-keeping writer: the rest of the file stays as
written) and emits `saved` with the settings read back, which the application hands to the engine through
its command door (`ApplySettings`), as the settings dialog does. Models that a managed app lists (Ollama,
LM Studio, ...) are shown beside them and can be loaded now; the app itself keeps their files.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import config
from app.core.config import ModelConfig, Settings
from app.core.errors import VramError
from app.core.holders import ModelStatus
from app.ui.dashboard_view import holder_title, state_words
from app.ui.growing_text import set_growing_text

logger = logging.getLogger(__name__)

COLUMNS = ("Name", "File", "GPU", "Priority")
FILE_FILTERS = "GGUF models (*.gguf);;safetensors (*.safetensors);;Any file (*)"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def name_for(path: Path, taken: Sequence[str]) -> str:
    """A model name from its file name ("Llama-3.1-8B.Q8_0.gguf" -> "Llama-3.1-8B.Q8_0"), unique."""
    base = _NAME_UNSAFE.sub("-", path.stem).strip("-") or "model"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def pick_model_file(parent: QWidget | None) -> str:
    """The file picker: GGUF first, then safetensors, then any file. "" when cancelled."""
    chosen, _ = QFileDialog.getOpenFileName(parent, "Add a model file", str(Path.home()), FILE_FILTERS)
    return chosen


class ModelsDialog(QDialog):
    saved = Signal(object)  # the new Settings, as loaded back from the file

    def __init__(
        self,
        settings: Settings,
        path: Path | None,
        *,
        app_models: Sequence[ModelStatus] = (),
        load_model: Callable[[str], None] | None = None,
        pick_file: Callable[[QWidget | None], str] = pick_model_file,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("VRAM Steward models")
        self._settings = settings
        self._path = path
        self._pick_file = pick_file
        self._load_model = load_model
        self._variants: dict[str, tuple[str, ...]] = {m.name: m.variants for m in settings.models}
        layout = QVBoxLayout(self)
        intro = QLabel(
            "Models kept in VRAM while the GPU is free. Under pressure the lowest priority goes first."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setAccessibleName("Models")
        layout.addWidget(self.table, 3)
        for model in settings.models:
            self._add_row(model)
        row = QHBoxLayout()
        self.add_button = QPushButton("&Add a model file...")
        self.add_button.clicked.connect(self._add_from_picker)
        self.remove_button = QPushButton("&Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        row.addStretch(1)
        layout.addLayout(row)

        self.app_models = QListWidget(self)
        self.app_models.setAccessibleName("Models your apps list")
        self._app_model_names: list[str] = []
        for served in app_models:
            item = QListWidgetItem(
                f"{served.name} ({holder_title(served.holder)}, GPU {served.gpu}): {state_words(served)}"
            )
            self.app_models.addItem(item)
            self._app_model_names.append(served.name)
        if app_models:
            layout.addWidget(QLabel("Models your managed apps list (the app keeps their files):"))
            rows = min(max(len(app_models), 2), 5)
            self.app_models.setMaximumHeight(rows * self.fontMetrics().height() * 3 // 2 + 8)
            layout.addWidget(self.app_models, 1)
            self.load_button = QPushButton("&Load the selected one now")
            self.load_button.setEnabled(load_model is not None)
            self.load_button.clicked.connect(self.load_selected)
            load_row = QHBoxLayout()
            load_row.addWidget(self.load_button)
            load_row.addStretch(1)
            layout.addLayout(load_row)
        else:
            self.app_models.hide()

        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setAccessibleName("Models error")
        self.error.hide()
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._save_and_close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(640, 420)

    # --- rows ----------------------------------------------------------------------------------

    def _add_row(self, model: ModelConfig) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        self.table.setItem(r, 0, QTableWidgetItem(model.name))
        item = QTableWidgetItem(str(model.path))
        item.setToolTip(str(model.path))
        self.table.setItem(r, 1, item)
        gpu = QSpinBox()
        gpu.setRange(0, 63)
        gpu.setValue(model.gpu)
        gpu.setAccessibleName(f"GPU of {model.name}")
        self.table.setCellWidget(r, 2, gpu)
        priority = QSpinBox()
        priority.setRange(-1000, 1000)
        priority.setValue(model.priority)
        priority.setToolTip("Higher stays longer: under pressure the lowest priority is freed first")
        priority.setAccessibleName(f"Priority of {model.name}")
        self.table.setCellWidget(r, 3, priority)

    def add_file(self, path: Path) -> str:
        """Add a row for a model file; returns the name it got (from the file name, made unique)."""
        name = name_for(path, [m.name for m in self.entries()])
        self._add_row(ModelConfig(name=name, path=path, gpu=self._settings.gpu_device))
        self.table.selectRow(self.table.rowCount() - 1)
        return name

    def _add_from_picker(self) -> None:
        chosen = self._pick_file(self)
        if chosen:
            self.add_file(Path(chosen))

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()}, reverse=True)
        for r in rows:
            self.table.removeRow(r)

    def set_priority(self, name: str, priority: int) -> None:
        for r in range(self.table.rowCount()):
            if self._text(r, 0) == name:
                self._spin(r, 3).setValue(priority)
                return
        raise KeyError(name)

    def load_selected(self) -> None:
        row = self.app_models.currentRow()
        if self._load_model is not None and 0 <= row < len(self._app_model_names):
            self._load_model(self._app_model_names[row])

    def _text(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text().strip() if item is not None else ""

    def _spin(self, row: int, column: int) -> QSpinBox:
        widget = self.table.cellWidget(row, column)
        assert isinstance(widget, QSpinBox)
        return widget

    def entries(self) -> list[ModelConfig]:
        """The rows as `[[models]]` entries (variants kept, minus names no longer there)."""
        out = []
        for r in range(self.table.rowCount()):
            name = self._text(r, 0)
            out.append(
                ModelConfig(
                    name=name,
                    path=Path(self._text(r, 1)),
                    gpu=self._spin(r, 2).value(),
                    priority=self._spin(r, 3).value(),
                    variants=self._variants.get(name, ()),
                )
            )
        names = {m.name for m in out}
        return [
            dataclasses.replace(m, variants=tuple(v for v in m.variants if v in names and v != m.name))
            for m in out
        ]

    # --- saving --------------------------------------------------------------------------------

    def problems(self, entries: Sequence[ModelConfig]) -> list[str]:
        out = []
        seen: set[str] = set()
        for m in entries:
            if not m.name:
                out.append(f"The model of {m.path} needs a name.")
            elif m.name in seen:
                out.append(f"Two models are named {m.name!r}: each needs its own name.")
            seen.add(m.name)
            if not m.path.is_file():
                out.append(f"{m.name}: {m.path} is not a file (moved or deleted?). Pick the file again.")
        return out

    def save(self) -> bool:
        """Validate and save; on failure show why and leave the file as it was."""
        entries = self.entries()
        problems = self.problems(entries)
        if problems:
            self._show_error("\n".join(problems))
            return False
        if tuple(entries) == self._settings.models:
            self._show_error("")
            return True
        try:
            new = config.update_settings(self._path, models=tuple(entries))
        except VramError as exc:
            self._show_error(exc.user_message())
            return False
        except OSError as exc:
            self._show_error(f"Could not write {self._path}: {exc}")
            return False
        logger.info("models saved: %s", ", ".join(m.name for m in new.models) or "none")
        self._settings = new
        self._show_error("")
        self.saved.emit(new)
        return True

    def _save_and_close(self) -> None:
        if self.save():
            self.accept()

    def _show_error(self, text: str) -> None:
        """The problem in full; the dialog grows to show it, so the form above keeps its room."""
        set_growing_text(self, self.error, f"⚠ Not saved:\n{text}" if text else "")
