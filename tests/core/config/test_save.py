"""Saving: edits keep the user's comments and layout, are validated first, and are written atomically."""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path

import pytest

from app.core import config, paths
from app.core.config import (
    AppRule,
    ConfigErrors,
    ModelConfig,
    ServerConfig,
    Settings,
    ensure_default_config,
    load_settings,
    save_settings,
    update_settings,
)
from app.core.errors import ConfigError
from app.core.units import GiB

COMMENTED = """\
# My settings. Do not lose this comment.
schema_version = 2

# I like it small.
reserved_system_vram = "1 GiB"   # trailing comment
auto_evict = true

[[models]]
# the big one
name = "big"
path = "big.gguf"   # relative on purpose
gpu = 1

[[models]]
name = "small"
path = "small.gguf"
"""


def changed_lines(before: str, after: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.fixture
def commented(tmp_path: Path) -> Path:
    for name in ("big.gguf", "small.gguf"):
        (tmp_path / name).write_text("weights")
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    return path


def test_update_changes_only_the_lines_of_the_changed_keys(commented: Path) -> None:
    settings = update_settings(commented, auto_evict=False, reserved_system_vram=3 * GiB)
    assert settings.auto_evict is False and settings.reserved_system_vram == 3 * GiB
    assert changed_lines(COMMENTED, commented.read_text()) == [
        '-reserved_system_vram = "1 GiB"   # trailing comment',
        "-auto_evict = true",
        '+reserved_system_vram = "3 GiB"   # trailing comment',
        "+auto_evict = false",
    ]
    assert load_settings(commented) == settings


def test_update_adds_a_new_key_at_the_top_level_not_inside_a_table(commented: Path) -> None:
    settings = update_settings(commented, headroom_percent=15.0, exclusive_apps=("blender",))
    text = commented.read_text()
    assert text.index("headroom_percent = 15.0") < text.index("[[models]]")
    assert settings.headroom_percent == 15.0 and settings.exclusive_apps == ("blender",)
    assert "# the big one" in text and "# relative on purpose" in text


def test_update_edits_a_model_in_place_keeping_its_comments(commented: Path) -> None:
    current = load_settings(commented)
    big = current.models[0]
    new = update_settings(
        commented, models=(ModelConfig(big.name, big.path, gpu=2, priority=4), current.models[1])
    )
    assert changed_lines(COMMENTED, commented.read_text()) == ["-gpu = 1", "+gpu = 2", "+priority = 4"]
    assert new.models[0].gpu == 2 and new.models[0].priority == 4
    assert new.models[1] == current.models[1]


def test_changing_gpu_device_keeps_models_with_an_explicit_gpu_where_they_are(commented: Path) -> None:
    before = load_settings(commented)
    after = update_settings(commented, gpu_device=1)
    assert [m.gpu for m in before.models] == [1, 0]
    assert [m.gpu for m in after.models] == [1, 0], "the model without a gpu key must stay on GPU 0"


def test_removing_and_adding_tables(commented: Path) -> None:
    rules = (AppRule("blender", "evict"), AppRule("steam:1091500", "ignore"))
    servers = (ServerConfig("ollama", "http://127.0.0.1:11434", keep_alive="-1"),)
    settings = update_settings(commented, models=(), app_rules=rules, servers=servers)
    text = commented.read_text()
    assert "[[models]]" not in text and text.count("[[app_rules]]") == 2
    assert settings.app_rules == rules and settings.servers == servers and settings.models == ()
    assert "# My settings. Do not lose this comment." in text


def test_saving_unchanged_settings_does_not_touch_the_file(commented: Path) -> None:
    os.utime(commented, ns=(10**18, 10**18))
    save_settings(load_settings(commented), commented)
    assert commented.read_text() == COMMENTED
    assert commented.stat().st_mtime_ns == 10**18


def test_update_validates_before_writing(commented: Path) -> None:
    with pytest.raises(ConfigErrors) as caught:
        update_settings(commented, headroom_percent=95.0)
    assert caught.value.key == "headroom_percent"
    assert commented.read_text() == COMMENTED
    with pytest.raises(ConfigError, match="did you mean auto_evict"):
        update_settings(commented, auto_evit=False)
    assert commented.read_text() == COMMENTED


def test_update_of_a_missing_file_starts_from_the_commented_default(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    path.parent.mkdir()
    update_settings(path, auto_pause_for_gaming=False)
    assert changed_lines(config.default_config_text(), path.read_text()) == [
        "-auto_pause_for_gaming = true",
        "+auto_pause_for_gaming = false",
    ]


def test_update_with_no_path_edits_the_default_file() -> None:
    update_settings(notifications=False)
    assert load_settings().notifications is False
    assert paths.default_config_file().exists()


def test_a_crash_before_the_rename_leaves_the_original_and_no_litter(
    commented: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in commented.parent.iterdir())

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        update_settings(commented, auto_evict=False)
    assert commented.read_text() == COMMENTED
    assert sorted(p.name for p in commented.parent.iterdir()) == before


def test_the_file_mode_is_kept(commented: Path) -> None:
    commented.chmod(0o640)
    update_settings(commented, auto_evict=False)
    assert stat.S_IMODE(commented.stat().st_mode) == 0o640


def test_a_symlinked_config_stays_a_symlink(commented: Path, tmp_path: Path) -> None:
    link = tmp_path / "link" / "config.toml"
    link.parent.mkdir()
    link.symlink_to(commented)
    # the models are relative to the link's folder now
    for name in ("big.gguf", "small.gguf"):
        (link.parent / name).write_text("weights")
    update_settings(link, auto_evict=False)
    assert link.is_symlink()
    assert "auto_evict = false" in commented.read_text()


def test_save_settings_refuses_to_overwrite_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("auto_evict = \n")
    with pytest.raises(ConfigErrors, match="TOML syntax"):
        save_settings(Settings(), path)
    assert path.read_text() == "auto_evict = \n"


def test_ensure_default_config_writes_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.toml"
    assert ensure_default_config(path) is True
    assert path.read_text() == config.default_config_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # only this user reads the settings
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text("auto_evict = false\n")
    assert ensure_default_config(path) is False
    assert path.read_text() == "auto_evict = false\n"
    assert ensure_default_config() is True and paths.default_config_file().exists()


def test_a_relative_model_path_is_saved_relative_to_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    saved = update_settings(path, models=(ModelConfig("a", Path("models/a.gguf"), gpu=0),))
    assert saved.models[0].path == tmp_path / "models" / "a.gguf"
    assert 'path = "models/a.gguf"' in path.read_text()
