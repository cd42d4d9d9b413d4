"""Edits of the settings file reach the running engine: a changed file that loads is applied once, one that
does not load is reported (every problem, once per change) and changes nothing, the app's own writes are
not applied twice, and a file that goes away leaves the running settings alone."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from app.core.config import load_settings
from app.core.settings import Settings
from app.core.settings_watch import SettingsFileWatcher


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.applied: list[Settings] = []

    def apply(self, new: Settings) -> None:
        self.settings = new
        self.applied.append(new)


def write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()  # a second edit within the same clock tick must still look changed
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("resume_cooldown_secs = 30\n")
    return path


def test_a_valid_edit_is_applied_once(file: Path) -> None:
    engine = Engine(load_settings(file))
    watcher = SettingsFileWatcher(file, lambda: engine.settings, engine.apply)
    assert watcher.poll() == "unchanged"
    write(file, "resume_cooldown_secs = 5\n")
    assert watcher.poll() == "applied"
    assert [s.resume_cooldown_secs for s in engine.applied] == [5.0]
    assert watcher.poll() == "unchanged"


def test_a_broken_edit_changes_nothing_and_is_reported_once(
    file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine(load_settings(file))
    watcher = SettingsFileWatcher(file, lambda: engine.settings, engine.apply)
    write(file, "resume_cooldown_secs = -5\nauto_evict = 'yes please'\n")
    with caplog.at_level(logging.ERROR):
        assert watcher.poll() == "broken"
        assert watcher.poll() == "unchanged"
    assert engine.applied == [] and engine.settings.resume_cooldown_secs == 30.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "resume_cooldown_secs" in errors[0] and "auto_evict" in errors[0]
    assert watcher.problem is not None and "auto_evict" in watcher.problem
    assert "yes please" in file.read_text(), "a broken file is never overwritten"
    write(file, "resume_cooldown_secs = 10\n")  # fixed: applied, and the problem is gone
    assert watcher.poll() == "applied" and watcher.problem is None


def test_the_apps_own_write_is_not_applied_twice(file: Path) -> None:
    from app.core.config import add_app_rule
    from app.core.settings import AppRule

    engine = Engine(load_settings(file))
    watcher = SettingsFileWatcher(file, lambda: engine.settings, engine.apply)
    engine.settings = add_app_rule(file, AppRule(match="Cyberpunk2077.exe", action="ignore"))  # the app's
    assert watcher.poll() == "same"
    assert engine.applied == []


def test_a_file_that_goes_away_keeps_the_running_settings(file: Path) -> None:
    engine = Engine(load_settings(file))
    watcher = SettingsFileWatcher(file, lambda: engine.settings, engine.apply)
    file.unlink()
    assert watcher.poll() == "missing"
    assert engine.applied == [] and watcher.poll() == "unchanged"
