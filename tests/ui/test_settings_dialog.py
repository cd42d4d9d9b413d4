"""The settings dialog round trip: built from SETTING_SPECS, saved through update_settings (comments kept),
invalid values shown and the file left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
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


def test_numbers_show_with_their_unit_and_no_raw_decimals(qtbot: Any, config_file: Path) -> None:
    dialog = dialog_for(qtbot, config_file)
    shown = {
        key: editor.text() for key, editor in dialog.editors.items() if isinstance(editor, QDoubleSpinBox)
    }
    assert shown["resume_cooldown_secs"] == "30 s"
    assert shown["headroom_percent"] == "10 %"
    assert shown["poll_interval_secs"] == "0.1 s"
    assert shown["idle_poll_interval_secs"] == "2 s"
    assert not [text for text in shown.values() if ".000" in text or text.endswith(".0 s")]
    spin = dialog.editors["resume_cooldown_secs"]
    assert isinstance(spin, QDoubleSpinBox)
    spin.lineEdit().selectAll()
    qtbot.keyClicks(spin.lineEdit(), "45.5")  # typed as a person would, the unit kept
    assert spin.value() == 45.5 and spin.text() == "45.5 s"


def test_poll_intervals_sit_under_advanced(qtbot: Any, config_file: Path) -> None:
    dialog = dialog_for(qtbot, config_file)
    tabs = [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())]
    assert tabs[-1] == "Advanced" and "Timing" in tabs
    advanced = dialog.tabs.widget(tabs.index("Advanced"))
    for key in ("poll_interval_secs", "idle_poll_interval_secs", "process_check_interval_secs"):
        assert advanced.isAncestorOf(dialog.editors[key]), key
    assert dialog.tabs.widget(tabs.index("Timing")).isAncestorOf(dialog.editors["resume_cooldown_secs"])


def test_an_error_grows_the_dialog_and_never_squashes_the_form(qtbot: Any, config_file: Path) -> None:
    dialog = dialog_for(qtbot, config_file)
    dialog.show()
    qtbot.waitExposed(dialog)
    form_before, dialog_before = dialog.tabs.height(), dialog.height()
    dialog.editors["reserved_system_vram"].setText("lots")  # type: ignore[attr-defined]
    dialog.editors["api_host"].setText(" ")  # type: ignore[attr-defined]
    dialog.tabs.setCurrentIndex(dialog.tabs.count() - 1)
    assert dialog.save() is False
    assert dialog.tabs.tabText(dialog.tabs.currentIndex()) == "GPU"  # the first bad field is shown
    qtbot.waitUntil(lambda: dialog.error.isVisible(), timeout=2000)
    assert dialog.tabs.height() >= form_before
    assert dialog.height() > dialog_before
    error = dialog.error
    assert error.height() >= error.heightForWidth(error.width()) - 2  # the whole message shows
    assert dialog.error.text().count("\n") >= 2  # both problems, one a line


def test_open_settings_file_opens_it(qtbot: Any, tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.toml"  # not written yet: opening writes the commented default first
    opened: list[str] = []
    dialog = SettingsDialog(
        config.Settings(), path, open_url=lambda url: opened.append(url.toLocalFile()) or True
    )
    qtbot.addWidget(dialog)
    qtbot.mouseClick(dialog.open_file_button, Qt.MouseButton.LeftButton)
    assert opened == [str(path)]
    assert path.is_file() and "#" in path.read_text()
    refused = SettingsDialog(config.Settings(), path, open_url=lambda url: False)
    qtbot.addWidget(refused)
    assert refused.open_file() is False
    assert "Could not open" in refused.error.text() and "text editor" in refused.error.text()
