"""The models dialog with real widgets: adding a model file writes a `[[models]]` entry (comments kept) and
the engine gets it through its command door; priority and removal likewise; bad entries are refused with a
reason and the file left alone; a managed app's models can be loaded from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from app.core import config
from app.core.holders import ModelState
from app.ui.application import StewardApp
from app.ui.models_dialog import FILE_FILTERS, ModelsDialog, name_for
from app.ui.worker import StewardWorker
from tests.fixtures import ui_snapshots as snaps
from tests.fixtures.ui_engine import SteppedSteward


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    config.ensure_default_config(path)
    return path


def model_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def comments(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.lstrip().startswith("#")]


def test_names_come_from_the_file_and_stay_unique() -> None:
    assert name_for(Path("/m/Llama-3.1-8B.Q8_0.gguf"), []) == "Llama-3.1-8B.Q8_0"
    assert name_for(Path("/m/my model (new).safetensors"), []) == "my-model-new"
    assert name_for(Path("/m/a.gguf"), ["a", "a-2"]) == "a-3"
    assert FILE_FILTERS.split(";;")[0] == "GGUF models (*.gguf)" and "Any file (*)" in FILE_FILTERS


def test_add_set_priority_and_remove_write_the_file_and_reach_the_engine(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, config_file: Path, tmp_path: Path
) -> None:
    before = comments(config_file)
    settings = config.load_settings(config_file)
    sim_runtime.steward.update_settings(settings)
    stepped = SteppedSteward(sim_runtime.steward, scenario_clock, poll_s=0.02)
    app = StewardApp(StewardWorker(stepped), settings, config_file, tray_available=False)
    qtbot.addWidget(app.dashboard)
    gguf = model_file(tmp_path, "qwen2.5-7b-q4.gguf")
    try:
        app.start()
        qtbot.waitUntil(lambda: app.snapshot is not None, timeout=3000)
        picked: list[str] = [str(gguf)]
        app.show_models()
        dialog = app.models_dialog
        assert dialog is not None
        dialog._pick_file = lambda _parent: picked.pop()  # the file picker, as a user would answer it
        qtbot.mouseClick(dialog.add_button, Qt.MouseButton.LeftButton)
        dialog.set_priority("qwen2.5-7b-q4", 5)
        assert dialog.save()
        saved = config.load_settings(config_file)
        assert [(m.name, m.path, m.priority) for m in saved.models] == [("qwen2.5-7b-q4", gguf, 5)]
        assert comments(config_file) == before  # the rest of the file as written
        qtbot.waitUntil(
            lambda: [m.name for m in stepped.steward.settings.models] == ["qwen2.5-7b-q4"], timeout=3000
        )

        dialog.table.selectRow(0)
        qtbot.mouseClick(dialog.remove_button, Qt.MouseButton.LeftButton)
        assert dialog.table.rowCount() == 0
        assert dialog.save()
        assert config.load_settings(config_file).models == ()
        qtbot.waitUntil(lambda: stepped.steward.settings.models == (), timeout=3000)
    finally:
        app.shutdown()


def test_a_missing_file_or_a_duplicate_name_is_refused_and_the_file_left_alone(
    qtbot: Any, config_file: Path, tmp_path: Path
) -> None:
    before = config_file.read_bytes()
    dialog = ModelsDialog(config.load_settings(config_file), config_file)
    qtbot.addWidget(dialog)
    dialog.show()
    table_height = dialog.table.height()
    dialog.add_file(tmp_path / "gone.gguf")
    dialog.add_file(model_file(tmp_path, "a.gguf"))
    dialog.table.item(1, 0).setText("gone")  # the same name twice
    with qtbot.assertNotEmitted(dialog.saved):
        assert dialog.save() is False
    assert "gone.gguf is not a file (moved or deleted?). Pick the file again." in dialog.error.text()
    assert "Two models are named 'gone'" in dialog.error.text()
    assert dialog.error.isVisible()
    assert dialog.table.height() >= table_height - 2  # the error takes new room, not the table's
    assert config_file.read_bytes() == before


def test_a_managed_apps_models_can_be_loaded_from_the_dialog(qtbot: Any, config_file: Path) -> None:
    loads: list[str] = []
    served = snaps.model(ModelState.UNLOADED, name="qwen3:8b", holder="ollama")
    dialog = ModelsDialog(
        config.load_settings(config_file), config_file, app_models=[served], load_model=loads.append
    )
    qtbot.addWidget(dialog)
    assert dialog.app_models.item(0).text() == "qwen3:8b (ollama, GPU 0): not loaded"
    dialog.app_models.setCurrentRow(0)
    qtbot.mouseClick(dialog.load_button, Qt.MouseButton.LeftButton)
    assert loads == ["qwen3:8b"]
