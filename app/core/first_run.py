"""First run: write the commented default settings file, and tell the user once where it is and what is on.

`first_run_notice()` is the text (a pure function); `take_first_run_notice()` does the I/O: it creates the
default settings file when there is none and returns the notice exactly once per user (a marker file in
the state dir remembers that it was shown). The tray and the daemon show what it returns.
"""

from __future__ import annotations

import logging
from pathlib import Path

from app.core import paths
from app.core.config import ensure_default_config, load_settings
from app.core.errors import VramError

logger = logging.getLogger(__name__)

MARKER_NAME = "first-run-done"


def first_run_notice(
    config_path: Path, *, already_shown: bool = False, auto_pause_for_gaming: bool = True
) -> str | None:
    """The first-run notice for a settings file just created at `config_path`; None once it was shown."""
    if already_shown:
        return None
    if auto_pause_for_gaming:
        gaming = (
            "Auto-pause for gaming is on: when a game starts, your models leave VRAM and come back after it "
            "ends."
        )
    else:
        gaming = "Auto-pause for gaming is off: models stay in VRAM when a game starts."
    return (
        f"Welcome to VRAM Steward. Your settings are in {config_path} (commented; edit it, or use "
        f"`vram-steward config`). {gaming} Add your models under [[models]] in that file."
    )


def marker_file(state_dir: Path | None = None) -> Path:
    return (state_dir if state_dir is not None else paths.state_dir()) / MARKER_NAME


def take_first_run_notice(config_path: Path | None = None, *, state_dir: Path | None = None) -> str | None:
    """Create the default settings file if `config_path` (default: the platform one) does not exist, and
    return the notice if this created it and the notice was never shown; the marker is written then.

    Never raises for a read-only home: the app must start anyway (it logs why instead)."""
    path = config_path if config_path is not None else paths.default_config_file()
    marker = marker_file(state_dir)
    try:
        created = ensure_default_config(path)
    except OSError as exc:
        logger.warning("could not write the default settings file %s: %s", path, exc)
        return None
    if not created:
        return None
    auto_pause = True
    try:
        auto_pause = load_settings(path, check_files=False).auto_pause_for_gaming
    except VramError as exc:  # the shipped default should always load; say so if it does not
        logger.error("the default settings file %s does not load: %s", path, exc)
    notice = first_run_notice(path, already_shown=marker.exists(), auto_pause_for_gaming=auto_pause)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError as exc:
        logger.warning("could not write %s (the first-run notice may show again): %s", marker, exc)
    return notice
