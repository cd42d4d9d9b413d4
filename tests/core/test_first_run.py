"""First run: the default settings file is created, and the notice shows once, naming where the file is."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import default_config_text, load_settings
from app.core.first_run import first_run_notice, marker_file, take_first_run_notice


def test_the_notice_names_the_file_and_says_auto_pause_is_on() -> None:
    notice = first_run_notice(Path("/home/ada/.config/vram-steward/config.toml"))
    assert notice is not None
    assert "/home/ada/.config/vram-steward/config.toml" in notice
    assert "Auto-pause for gaming is on" in notice


def test_the_notice_says_when_auto_pause_is_off_and_is_none_once_shown() -> None:
    off = first_run_notice(Path("c.toml"), auto_pause_for_gaming=False)
    assert off is not None and "Auto-pause for gaming is off" in off
    assert first_run_notice(Path("c.toml"), already_shown=True) is None


def test_first_run_creates_the_commented_default_and_shows_the_notice_once(tmp_path: Path) -> None:
    config = tmp_path / "config" / "config.toml"
    state = tmp_path / "state"

    notice = take_first_run_notice(config, state_dir=state)

    assert notice is not None and str(config) in notice and "on" in notice
    assert config.read_text(encoding="utf-8") == default_config_text()
    assert "#" in config.read_text(encoding="utf-8")  # commented, not a bare dump
    assert load_settings(config, check_files=False).auto_pause_for_gaming is True
    assert marker_file(state).exists()
    assert take_first_run_notice(config, state_dir=state) is None  # the file exists now


def test_a_deleted_config_is_recreated_but_the_notice_does_not_return(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    state = tmp_path / "state"
    assert take_first_run_notice(config, state_dir=state) is not None
    config.unlink()

    assert take_first_run_notice(config, state_dir=state) is None
    assert config.exists()


def test_an_existing_config_is_left_alone_and_gets_no_notice(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("schema_version = 2\nauto_pause_for_gaming = false\n", encoding="utf-8")

    assert take_first_run_notice(config, state_dir=tmp_path / "state") is None
    assert config.read_text(encoding="utf-8") == "schema_version = 2\nauto_pause_for_gaming = false\n"
    assert not marker_file(tmp_path / "state").exists()


def test_the_default_paths_come_from_the_platform_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_CONFIG_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "s"))

    notice = take_first_run_notice()

    assert notice is not None and str(tmp_path / "c" / "config.toml") in notice
    assert (tmp_path / "s" / "first-run-done").exists()


def test_an_unwritable_config_dir_gives_no_notice_and_no_crash(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("", encoding="utf-8")  # mkdir under a file fails even for root

    assert take_first_run_notice(not_a_dir / "config.toml", state_dir=tmp_path / "s") is None
    assert not marker_file(tmp_path / "s").exists()
