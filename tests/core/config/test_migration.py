"""Schema 1 files are migrated to schema 2 on load: backed up first, rewritten atomically, comments kept,
logged; never silently reset."""

from __future__ import annotations

import logging
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import (
    SCHEMA_VERSION,
    ConfigErrors,
    ModelConfig,
    file_schema_version,
    load_settings,
    update_settings,
)
from app.core.units import MiB

V1 = """\
# my old settings
schema_version = 1
reserved_system_vram_mb = 1536   # for the compositor
check_interval = 2.5
auto_evict = false

[[model]]
# the only one
name = "llama"
path = "llama.gguf"
priority = 2
"""

V1_NO_VERSION = """\
reserved_system_vram_mb = 512
check_interval = 1
"""


@pytest.fixture
def v1_file(tmp_path: Path) -> Path:
    (tmp_path / "llama.gguf").write_text("weights")
    path = tmp_path / "config.toml"
    path.write_text(V1)
    path.chmod(0o600)
    return path


def test_loading_a_v1_file_migrates_it_with_a_backup(v1_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.core.config"):
        settings = load_settings(v1_file)
    assert settings.reserved_system_vram == 1536 * MiB
    assert settings.process_check_interval_secs == 2.5
    assert settings.auto_evict is False
    assert settings.models == (ModelConfig("llama", v1_file.parent / "llama.gguf", gpu=0, priority=2),)

    backup = v1_file.with_name("config.toml.v1.bak")
    assert backup.read_text() == V1
    text = v1_file.read_text()
    assert tomllib.loads(text)["schema_version"] == SCHEMA_VERSION
    assert 'reserved_system_vram = "1536 MiB"   # for the compositor' in text
    assert "process_check_interval_secs = 2.5" in text
    assert "[[models]]\n# the only one" in text and "# my old settings" in text
    assert stat.S_IMODE(v1_file.stat().st_mode) == 0o600
    assert file_schema_version(v1_file) == SCHEMA_VERSION
    assert load_settings(v1_file) == settings
    assert any(
        "from schema 1 to 2" in r.getMessage() and str(backup) in r.getMessage() for r in caplog.records
    )


def test_an_existing_backup_is_never_overwritten(v1_file: Path) -> None:
    first = v1_file.with_name("config.toml.v1.bak")
    first.write_text("an older backup")
    load_settings(v1_file)
    assert first.read_text() == "an older backup"
    assert v1_file.with_name("config.toml.v1.1.bak").read_text() == V1


def test_a_file_without_schema_version_but_with_v1_keys_is_v1(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(V1_NO_VERSION)
    assert file_schema_version(path) == 1
    settings = load_settings(path)
    assert settings.reserved_system_vram == 512 * MiB and settings.process_check_interval_secs == 1
    assert path.read_text().startswith("schema_version = 2\n")
    assert (tmp_path / "config.toml.v1.bak").read_text() == V1_NO_VERSION


def test_an_unusual_layout_is_migrated_without_its_comments_rather_than_wrongly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.gguf").write_text("w")
    path = tmp_path / "config.toml"
    original = 'schema_version = 1\nmodel = [{ name = "a", path = "a.gguf" }]\n'
    path.write_text(original)
    settings = load_settings(path)
    assert [m.name for m in settings.models] == ["a"]
    assert tomllib.loads(path.read_text())["models"] == [{"name": "a", "path": "a.gguf"}]
    assert (tmp_path / "config.toml.v1.bak").read_text() == original
    assert any("could not keep the comments" in r.getMessage() for r in caplog.records)


def test_an_invalid_v1_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("schema_version = 1\nreserved_system_vram_mb = -4\n")
    with pytest.raises(ConfigErrors, match="reserved_system_vram_mb = -4: expected a whole number of MiB"):
        load_settings(path)
    assert path.read_text() == "schema_version = 1\nreserved_system_vram_mb = -4\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_an_error_in_a_v1_file_points_at_the_v1_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("schema_version = 1\n\ncheck_interval = 0\n")
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    assert caught.value.line == 3
    assert caught.value.key == "process_check_interval_secs"


def test_config_check_does_not_migrate(v1_file: Path, config_cli: Callable[..., Any]) -> None:
    result = config_cli("config", "check", str(v1_file))
    assert result.code == 0, result.err
    assert f"OK: {v1_file}" in result.out and "schema 1" in result.out
    assert v1_file.read_text() == V1
    assert not v1_file.with_name("config.toml.v1.bak").exists()


def test_an_update_of_a_v1_file_migrates_then_edits(v1_file: Path) -> None:
    settings = update_settings(v1_file, auto_evict=True)
    assert settings.auto_evict is True and settings.reserved_system_vram == 1536 * MiB
    assert v1_file.with_name("config.toml.v1.bak").read_text() == V1
    assert "auto_evict = true" in v1_file.read_text() and "# the only one" in v1_file.read_text()


def test_a_migration_that_cannot_be_written_still_loads(
    v1_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import app.core.config as config_module

    def refuse(path: Path, text: str, **_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(config_module, "write_atomic", refuse)
    settings = load_settings(v1_file)
    assert settings.reserved_system_vram == 1536 * MiB
    assert v1_file.read_text() == V1
    assert not v1_file.with_name("config.toml.v1.bak").exists()
    assert any("could not migrate" in r.getMessage() for r in caplog.records)
