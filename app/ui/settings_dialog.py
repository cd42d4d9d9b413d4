"""The settings dialog, built from `app.core.config.SETTING_SPECS` so it cannot drift from the file format.

Each value is checked with the spec's own `coerce()` (the config module's validation), then saved through
`update_settings()`, which edits the user's file in place (comments kept), validates the result and writes
atomically. Any problem is shown in the dialog, naming the setting, and the file stays as it was; the
dialog grows to show it rather than squashing the form. Numbers show with their unit and no trailing
zeros ("30 s", "10 %"); the poll intervals and the finer tuning sit in an Advanced tab.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core import config, paths
from app.core.config import SETTING_SPECS, Settings, SettingSpec, SpecKind
from app.core.errors import VramError
from app.ui import autostart
from app.ui.growing_text import set_growing_text
from app.ui.vulkan_layer_row import VulkanLayerRow

logger = logging.getLogger(__name__)

BIG = 2_000_000_000
ADVANCED = "Advanced"
# Keys most people never touch: how often we sample, and the finer points of the policy. Their own section
# in SETTING_SPECS says what they are about; the dialog keeps them out of the way.
ADVANCED_KEYS = frozenset(
    {
        "process_check_interval_secs",
        "poll_interval_secs",
        "idle_poll_interval_secs",
        "max_cooldown_secs",
        "calm_reset_secs",
        "pressure_samples",
        "baseline_max_process_vram",
        "notification_coalesce_secs",
    }
)


def section_of(spec: SettingSpec) -> str:
    return ADVANCED if spec.key in ADVANCED_KEYS else (spec.section or "General")


class UnitSpinBox(QDoubleSpinBox):
    """A number with its unit, written as people write it: "30 s", "0.1 s", "10 %" (no "30.000 s")."""

    def textFromValue(self, value: float) -> str:
        text = f"{value:.{self.decimals()}f}".rstrip("0").rstrip(".")
        return text.replace(".", self.locale().decimalPoint())


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
        dspin = UnitSpinBox()
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

    def __init__(
        self,
        settings: Settings,
        path: Path | None,
        parent: QWidget | None = None,
        *,
        open_url: Callable[[QUrl], bool] = QDesktopServices.openUrl,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("VRAM Steward settings")
        self._settings = settings
        self._path = path
        self._open_url = open_url
        self.editors: dict[str, QWidget] = {}
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget(self)
        forms: dict[str, QFormLayout] = {}
        sections = [section_of(s) for s in SETTING_SPECS]
        order = [s for s in dict.fromkeys(sections) if s != ADVANCED] + [ADVANCED]
        for section in order:
            page = QWidget()
            forms[section] = QFormLayout(page)
            self.tabs.addTab(page, section)
        for spec, section in zip(SETTING_SPECS, sections, strict=True):
            editor = make_editor(spec, getattr(settings, spec.key))
            editor.setToolTip(f"{spec.help}\n(key: {spec.key})")
            editor.setAccessibleName(spec.label)
            editor.setAccessibleDescription(spec.help)
            label = QLabel(f"{spec.label}:")
            label.setBuddy(editor)
            label.setToolTip(spec.help)
            forms[section].addRow(label, editor)
            self.editors[spec.key] = editor
            if spec.key == "vulkan_layer_socket":  # the layer itself is installed here, not by a key
                self.vulkan_layer = VulkanLayerRow()
                forms[section].addRow(QLabel("Vulkan game layer:"), self.vulkan_layer)
        layout.addWidget(self.tabs, 1)
        self.autostart = QCheckBox("Start VRAM Steward when I &log in")
        self.autostart.setChecked(autostart.is_enabled())
        self.autostart.setToolTip(f"Writes or removes {autostart.autostart_file()}")
        layout.addWidget(self.autostart)
        self.file = Path(path) if path is not None else paths.default_config_file()
        where = QLabel(
            f"Saved to {self.file}. Models: the dashboard's Models tab. "
            "App rules and managed apps: in that file too."
        )
        where.setWordWrap(True)
        layout.addWidget(where)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setAccessibleName("Settings error")
        self.error.setTextInteractionFlags(
            self.error.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse
        )
        self.error.hide()
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.open_file_button = QPushButton("&Open settings file")
        self.open_file_button.setToolTip(f"Open {self.file} in your text editor")
        self.open_file_button.clicked.connect(self.open_file)
        buttons.addButton(self.open_file_button, QDialogButtonBox.ButtonRole.ResetRole)
        buttons.accepted.connect(self._save_and_close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.buttons = buttons
        # the form never gets less room than it needs: an error makes the dialog taller instead
        self.tabs.setMinimumSize(self.tabs.sizeHint())
        self.tabs.setMinimumWidth(max(self.tabs.tabBar().sizeHint().width() + 8, 480))  # every tab in view

    def _page_of(self, key: str) -> QWidget | None:
        editor = self.editors[key]
        pages = (self.tabs.widget(i) for i in range(self.tabs.count()))
        return next((page for page in pages if page is not None and page.isAncestorOf(editor)), None)

    def open_file(self) -> bool:
        """Open the settings file in the desktop's editor for it (the file is written first if missing)."""
        config.ensure_default_config(self.file)
        opened = self._open_url(QUrl.fromLocalFile(str(self.file)))
        if not opened:
            self._show_error(
                f"Could not open {self.file}: no application opens it. Edit it in a text editor."
            )
        return bool(opened)

    def changes(self) -> dict[str, Any]:
        """Typed values that differ from the current settings; ValueError naming the setting when invalid."""
        out: dict[str, Any] = {}
        problems = []
        for spec in SETTING_SPECS:
            raw = editor_raw(spec, self.editors[spec.key])
            if raw == "" and getattr(self._settings, spec.key) == "":
                continue  # an optional text left empty (e.g. no TLS certificate): unchanged
            try:
                value = spec.coerce(raw)
            except ValueError as exc:
                problems.append(f"{spec.label} ({spec.key}) = {raw!r}: expected {exc}")
                page = self._page_of(spec.key)
                if len(problems) == 1 and page is not None:  # the first bad field comes into view
                    self.tabs.setCurrentIndex(self.tabs.indexOf(page))
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
        """The problem in full; the dialog grows to show it, so the form above keeps its room."""
        set_growing_text(self, self.error, f"⚠ Not saved:\n{text}" if text else "")
