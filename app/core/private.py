"""Folders and files only this user may read: the state, log and config folders 0700, what is in them 0600.

`private_dir()` creates a folder 0700 (parents included) or tightens an existing one of ours, with a log
line; a folder that belongs to another user is refused (they could plant or swap files in it).
`private_file()` tightens an existing file of ours to 0600. `secure_app_dirs()` applies both to every folder
and file of the app at start, and clears the temp files of writes that were killed. New files are written
0600 by `atomic.write_atomic` and by the log handler (logs.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from app.core import paths
from app.core.atomic import remove_stale_temps
from app.core.errors import VramError

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafeFolder(VramError, OSError):
    """A folder the app keeps secrets in belongs to another user, or is not a folder (an OSError too: callers
    that survive an unwritable folder survive this one)."""

    code = "unsafe_folder"

    def __init__(self, folder: Path, why: str) -> None:
        super().__init__(
            f"{folder} {why}: refusing to keep VRAM Steward's files there",
            details={"path": str(folder)},
            suggestions=[
                f"Remove or move {folder}, or point VRAM_STEWARD_STATE_DIR / VRAM_STEWARD_CONFIG_DIR / "
                "VRAM_STEWARD_LOG_DIR at a folder of yours"
            ],
        )


def _own_uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def private_dir(folder: Path) -> Path:
    """`folder`, created 0700 if missing (its missing parents too); an existing one of ours is tightened
    to 0700 with a warning. Raises UnsafeFolder when it is not a folder or belongs to another user."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process: checked below
            created.mkdir(mode=DIR_MODE)
    try:
        info = os.stat(folder)  # a symlinked folder (moved to another disk) is fine if it is ours
    except OSError as exc:
        raise UnsafeFolder(folder, f"cannot be read ({exc.strerror})") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(folder, "is not a folder")
    uid = _own_uid()
    if uid is not None and info.st_uid != uid:
        raise UnsafeFolder(folder, f"belongs to user id {info.st_uid}, not to you")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, DIR_MODE)
        logger.warning(
            "folder %s was open to other users (mode %o): tightened to %o",
            folder,
            stat.S_IMODE(info.st_mode),
            DIR_MODE,
        )
    return folder


def private_file(path: Path) -> bool:
    """Tighten an existing regular file of ours to 0600, with a warning; True when it changed. A missing
    file, a symlink (left as the user made it) or another user's file is left alone."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    uid = _own_uid()
    if not stat.S_ISREG(info.st_mode) or (uid is not None and info.st_uid != uid):
        return False
    if not stat.S_IMODE(info.st_mode) & 0o077:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    logger.warning(
        "file %s was readable by other users (mode %o): tightened to %o",
        path,
        stat.S_IMODE(info.st_mode),
        FILE_MODE,
    )
    return True


def secure_app_dirs() -> None:
    """At start: the state, log and config folders 0700, the settings, log and audit files 0600. A folder
    that cannot be secured is logged, not fatal here (the API token refuses it on its own)."""
    for folder in (paths.state_dir(), paths.log_dir(), paths.config_dir()):
        try:
            private_dir(folder)
        except (OSError, VramError) as exc:
            logger.warning("cannot secure %s: %s", folder, exc)
            continue
        remove_stale_temps(folder)
    for file in (paths.default_config_file(), paths.log_file(), paths.audit_log_file()):
        try:
            private_file(file)
        except OSError as exc:
            logger.warning("cannot tighten %s: %s", file, exc)
