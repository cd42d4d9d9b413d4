"""The settings dialog's Vulkan layer row installs and removes the real layer (compiled with gcc against the
Vulkan headers) for this user, and says what went wrong when it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.errors import VramError
from app.ui.vulkan_layer_row import INSTALL_TEXT, UNINSTALL_TEXT, VulkanLayerRow


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("VRAM_STEWARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "data"


def test_install_then_uninstall_from_the_settings_dialog(qtbot: Any, data_home: Path) -> None:
    pytest.importorskip("app.core.vulkan.build")
    if not Path("/usr/include/vulkan/vulkan.h").is_file():
        pytest.skip("NOT TESTED: no Vulkan headers (libvulkan-dev)")
    row = VulkanLayerRow()
    qtbot.addWidget(row)
    assert row.button.text() == INSTALL_TEXT and "Not installed" in row.state.text()
    row.button.click()
    manifests = list((data_home / "vulkan" / "implicit_layer.d").glob("*.json"))
    assert manifests, "the click installed the layer's manifest"
    assert row.button.text() == UNINSTALL_TEXT and row.state.text().startswith("Installed")
    row.button.click()
    assert not (data_home / "vulkan").exists() and not (data_home / "vram-steward").exists(), "nothing left"
    assert row.button.text() == INSTALL_TEXT


def test_a_failed_install_is_shown_in_the_row(qtbot: Any, data_home: Path) -> None:
    def install() -> None:
        raise VramError("the Vulkan layer could not be built: gcc not found", suggestions=["apt install gcc"])

    row = VulkanLayerRow(install=install, status=lambda: {"installed": False})
    qtbot.addWidget(row)
    row.button.click()
    assert "gcc not found" in row.state.text() and row.button.text() == INSTALL_TEXT


def test_the_settings_dialog_has_the_row(qtbot: Any, data_home: Path, tmp_path: Path) -> None:
    from app.core.settings import Settings
    from app.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(Settings(), tmp_path / "config.toml")
    qtbot.addWidget(dialog)
    assert isinstance(dialog.vulkan_layer, VulkanLayerRow)
