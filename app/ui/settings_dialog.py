"""The settings dialog, built from `app.core.config.SETTING_SPECS` so it cannot drift from the file format.

Each value is checked with the spec's own `coerce()` (the config module's validation), then saved through
`update_settings()`, which edits the user's file in place (comments kept), validates the result and writes
atomically. Any problem is shown in the dialog, naming the setting, and the file stays as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import config
from app.core.config import SETTING_SPECS, Settings, SettingSpec, SpecKind
from app.core.errors import VramError
from app.ui import autostart

logger = logging.getLogger(__name__)

BIG = 2_000_000_000


def make_editor(spec: SettingSpec, value: Any) -> QWidget:
    """A widget for one key, showing `value`."""
    kind = spec.kind
    if kind is SpecKind.BOOL:
        box = QCheckBox()
        box.setChecked(bool(value))
        return box
    if kind in (SpecKind.INT, SpecKind.OPTIONAL_INT):
        spin = QSpinBox()
        high = int(spec.maximum) if spec.maximum is not None else BIG
        low = int(spec.minimum) if spec.minimum is not None else 0
        if kind is SpecKind.OPTIONAL_INT:
            low = 0
            spin.setSpecialValueText("off")
        spin.setRange(low, high)
        spin.setValue(int(value or 0))
        if spec.unit:
            spin.setSuffix(f" {spec.unit}")
        return spin
    if kind is SpecKind.FLOAT:
        dspin = QDoubleSpinBox()
        dspin.setDecimals(3)
        dspin.setRange(
            spec.minimum if spec.minimum is not None else 0.0,
            spec.maximum if spec.maximum is not None else 1e9,
        )
        dspin.setValue(float(value))
        if spec.unit:
            dspin.setSuffix(f" {spec.unit}")
        return dspin
    if spec.choices:
        combo = QComboBox()
        combo.addItems(list(spec.choices))
        combo.setCurrentText(str(value))
        return combo
    edit = QLineEdit()
    if kind is SpecKind.TEXT_LIST:
        edit.setText(", ".join(value or ()))
        edit.setPlaceholderText("comma-separated, e.g. blender, resolve")
    else:
        edit.setText(str(spec.to_toml(value)))
    return edit


def editor_raw(spec: SettingSpec, editor: QWidget) -> object:
    """The raw TOML-like value an editor holds (what the file would contain)."""
    if isinstance(editor, QCheckBox):
        return editor.isChecked()
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.value()
    if isinstance(editor, QComboBox):
        return editor.currentText()
    assert isinstance(editor, QLineEdit)
    text = editor.text().strip()
    if spec.kind is SpecKind.TEXT_LIST:
        return [part.strip() for part in text.split(",") if part.strip()]
    if spec.kind is SpecKind.SIZE and text.isdigit():
        return int(text)
    return editor.text()


class SettingsDialog(QDialog):
    saved = Signal(object)  # the new Settings, as loaded back from the file

    def __init__(self, settings: Settings, path: Path | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("VRAM Steward settings")
        self._settings = settings
        self._path = path
        self.editors: dict[str, QWidget] = {}
        layout = QVBoxLayout(self)
        tabs = QTabWidget(self)
        forms: dict[str, QFormLayout] = {}
        for spec in SETTING_SPECS:
            section = spec.section or "General"
            if section not in forms:
                page = QWidget()
                forms[section] = QFormLayout(page)
                tabs.addTab(page, section)
            editor = make_editor(spec, getattr(settings, spec.key))
            editor.setToolTip(f"{spec.help}\n(key: {spec.key})")
            editor.setAccessibleName(spec.label)
            editor.setAccessibleDescription(spec.help)
            label = QLabel(f"{spec.label}:")
            label.setBuddy(editor)
            label.setToolTip(spec.help)
            forms[section].addRow(label, editor)
            self.editors[spec.key] = editor
        layout.addWidget(tabs)
        self.autostart = QCheckBox("Start VRAM Steward when I &log in")
        self.autostart.setChecked(autostart.is_enabled())
        self.autostart.setToolTip(f"Writes or removes {autostart.autostart_file()}")
        layout.addWidget(self.autostart)
        where = QLabel(
            f"Saved to {path or 'the default settings file'}. Models, app rules and servers: edit that file."
        )
        where.setWordWrap(True)
        layout.addWidget(where)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setAccessibleName("Settings error")
        self.error.hide()
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self._save_and_close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.buttons = buttons

    def changes(self) -> dict[str, Any]:
        """Typed values that differ from the current settings; ValueError naming the setting when invalid."""
        out: dict[str, Any] = {}
        problems = []
        for spec in SETTING_SPECS:
            raw = editor_raw(spec, self.editors[spec.key])
            try:
                value = spec.coerce(raw)
            except ValueError as exc:
                problems.append(f"{spec.label} ({spec.key}) = {raw!r}: expected {exc}")
                continue
            if value != getattr(self._settings, spec.key):
                out[spec.key] = value
        if problems:
            raise ValueError("\n".join(problems))
        return out

    def save(self) -> bool:
        """Validate and save; on failure show why and leave the file as it was."""
        try:
            if self.autostart.isChecked() != autostart.is_enabled():
                autostart.set_enabled(self.autostart.isChecked())
            changes = self.changes()
            if not changes:
                self._show_error("")
                return True
            new = config.update_settings(self._path, **changes)
        except ValueError as exc:
            self._show_error(str(exc))
            return False
        except VramError as exc:
            self._show_error(exc.user_message())
            return False
        except OSError as exc:
            self._show_error(f"Could not write {self._path}: {exc}")
            return False
        logger.info("settings saved: %s", ", ".join(sorted(changes)))
        self._settings = new
        self._show_error("")
        self.saved.emit(new)
        return True

    def _save_and_close(self) -> None:
        if self.save():
            self.accept()

    def _show_error(self, text: str) -> None:
        self.error.setText(f"⚠ Not saved:\n{text}" if text else "")
        self.error.setVisible(bool(text))
