"""The settings dialog round trip: built from SETTING_SPECS, saved through update_settings (comments kept),
invalid values shown and the file left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QLineEdit, QSpinBox

from app.core import config
from app.core.config import SETTING_SPECS
from app.core.units import GiB
from app.ui.settings_dialog import SettingsDialog


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    config.ensure_default_config(path)
    return path


def dialog_for(qtbot: Any, path: Path) -> SettingsDialog:
    dialog = SettingsDialog(config.load_settings(path), path)
    qtbot.addWidget(dialog)
    return dialog


def test_every_setting_has_an_editor_of_the_right_kind(qtbot: Any, config_file: Path) -> None:
    dialog = dialog_for(qtbot, config_file)
    assert set(dialog.editors) == {s.key for s in SETTING_SPECS}
    assert isinstance(dialog.editors["auto_evict"], QCheckBox)
    assert isinstance(dialog.editors["api_port"], QSpinBox)
    assert isinstance(dialog.editors["headroom_percent"], QDoubleSpinBox)
    reserved = dialog.editors["reserved_system_vram"]
    assert isinstance(reserved, QLineEdit)
    assert reserved.text() == "2 GiB"
    assert dialog.changes() == {}  # showing the file's values changes nothing


def test_saving_changes_the_file_and_keeps_its_comments(qtbot: Any, config_file: Path) -> None:
    before = config_file.read_text()
    dialog = dialog_for(qtbot, config_file)
    dialog.editors["auto_evict"].setChecked(False)  # type: ignore[attr-defined]
    dialog.editors["reserved_system_vram"].setText("3 GiB")  # type: ignore[attr-defined]
    dialog.editors["headroom_percent"].setValue(15.0)  # type: ignore[attr-defined]
    with qtbot.waitSignal(dialog.saved, timeout=1000) as blocker:
        assert dialog.save()
    after = config_file.read_text()
    assert "auto_evict = false" in after
    assert 'reserved_system_vram = "3 GiB"' in after
    assert "headroom_percent = 15.0" in after
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and comments == [line for line in after.splitlines() if line.lstrip().startswith("#")]
    loaded = config.load_settings(config_file)
    assert (loaded.auto_evict, loaded.reserved_system_vram, loaded.headroom_percent) == (False, 3 * GiB, 15.0)
    assert blocker.args[0] == loaded
    assert not dialog.error.isVisibleTo(dialog)


@pytest.mark.parametrize(
    ("key", "text", "words"),
    [
        ("reserved_system_vram", "lots", "Reserved VRAM (reserved_system_vram) = 'lots': expected a size"),
        ("api_host", "   ", "API address (api_host)"),
    ],
)
def test_an_invalid_value_is_shown_and_the_file_is_unchanged(
    qtbot: Any, config_file: Path, key: str, text: str, words: str
) -> None:
    before = config_file.read_bytes()
    dialog = dialog_for(qtbot, config_file)
    dialog.editors["auto_evict"].setChecked(False)  # type: ignore[attr-defined]  # a valid change too
    dialog.editors[key].setText(text)  # type: ignore[attr-defined]
    with qtbot.assertNotEmitted(dialog.saved):
        assert dialog.save() is False
    assert words in dialog.error.text()
    assert dialog.error.isVisibleTo(dialog)
    assert config_file.read_bytes() == before


def test_the_config_modules_own_checks_are_shown_too(qtbot: Any, config_file: Path) -> None:
    """A value every editor accepts but the whole-file validation refuses: a remote API address."""
    before = config_file.read_bytes()
    dialog = dialog_for(qtbot, config_file)
    dialog.editors["api_host"].setText("0.0.0.0")  # type: ignore[attr-defined]
    assert dialog.save() is False
    assert "api_host" in dialog.error.text()
    assert config_file.read_bytes() == before


def test_the_autostart_box_writes_the_xdg_entry(qtbot: Any, config_file: Path) -> None:
    from app.ui import autostart

    dialog = dialog_for(qtbot, config_file)
    assert not dialog.autostart.isChecked()
    dialog.autostart.setChecked(True)
    assert dialog.save()
    assert autostart.autostart_file().exists()
    dialog.autostart.setChecked(False)
    assert dialog.save()
    assert not autostart.autostart_file().exists()
