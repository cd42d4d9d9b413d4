"""Edits of the settings file reach the running engine: `vram-steward config set`, `discover --manage`, a text
editor. The daemon and the tray poll `SettingsFileWatcher.poll()` every few seconds (one `stat`, nothing else,
while the file sits still). A changed file that loads is applied through the caller's `apply` (the engine's
door, `ApplySettings`); one that does not load is reported once per change, with every problem, and the
engine runs on with what it had: a broken file is never overwritten and never stops the app."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from app.core.errors import VramError
from app.core.settings import Settings

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0  # how often the callers stat the file

Stamp = tuple[int, int, int]  # (inode, size, mtime in ns): any write, or a replace by rename, changes it


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _load(path: Path) -> Settings:
    from app.core.config import load_settings

    return load_settings(path)


class SettingsFileWatcher:
    """Applies each new, valid version of `path`. `current()` is what the engine runs with now (a file
    written by the app itself, already applied, is not applied twice); `transform` keeps what the command
    line overrides (the daemon's `--port`)."""

    def __init__(
        self,
        path: Path,
        current: Callable[[], Settings],
        apply: Callable[[Settings], object],
        *,
        load: Callable[[Path], Settings] = _load,
        transform: Callable[[Settings], Settings] = lambda s: s,
    ) -> None:
        self.path = path
        self._current = current
        self._apply = apply
        self._load = load
        self._transform = transform
        self._stamp = _stamp(path)
        self.problem: str | None = None  # why the file on disk is not what runs, while it does not load

    def poll(self) -> str:
        """ "unchanged", "missing" (the file went away: the engine keeps its settings), "same" (it changed but
        says what already runs), "applied", or "broken" (logged once per change)."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return "unchanged"
        self._stamp = stamp
        if stamp is None:
            logger.warning(
                "the settings file %s went away; running on with the settings loaded before", self.path
            )
            return "missing"
        try:
            new = self._transform(self._load(self.path))
        except VramError as exc:
            self.problem = exc.user_message()
            logger.error(
                "the settings file %s changed but does not load; running on with the previous settings:\n%s",
                self.path,
                self.problem,
            )
            return "broken"
        self.problem = None
        if new == self._current():
            return "same"
        logger.info("the settings file %s changed: applying it", self.path)
        self._apply(new)
        return "applied"
