"""One way to replace a file: write a temp file beside it, fsync, rename over the old one.

Readers see the old file or the new one, never half of either, and a crash leaves the old file in place.
The temp file is created with O_EXCL|O_NOFOLLOW under a random name, so a symlink or file planted where
it will be (another user's, in a shared folder) is never followed nor overwritten; a failed write removes
its temp file. Used for every file the app writes (settings, API token and endpoint, manifests, the
autostart entry); the audit log's rotation is a rename, not a write. A writer killed mid-write (kill -9)
leaves its temp file behind: `remove_stale_temps()` clears those at start (app/core/private.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path

logger = logging.getLogger(__name__)

NEW_FILE_MODE = 0o600  # a new file's mode when the caller asks for none: only this user reads it
_TEMP_ATTEMPTS = 8  # names tried when the random one is taken (a planted file or a symlink)
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")  # what _temp_path() makes
STALE_TEMP_S = 300.0  # a temp file this old is a killed writer's, not one being written now


def write_atomic(path: Path | str, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace `path` with `data` (str is written as UTF-8, newlines as given).

    `mode` sets the file's permission bits (0o600 for a secret, also tightening an existing file); without
    it an existing file keeps its mode and a new one gets NEW_FILE_MODE (0600). A symlink at `path` is
    replaced, not written through: callers that keep a dotfiles symlink resolve it first. Raises OSError
    (the old file, if any, is then unchanged and no temp file is left behind).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if mode is None:
        mode = _existing_mode(path)
    fd, temp = _create_temp(path, mode)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # exact bits: the umask applied at creation may have removed some
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _existing_mode(path: Path) -> int:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return NEW_FILE_MODE
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else NEW_FILE_MODE


def _temp_path(path: Path) -> Path:
    """A hidden name beside `path`, random so that nobody can place anything there in advance."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def remove_stale_temps(folder: Path, *, older_than_s: float = STALE_TEMP_S) -> int:
    """Remove temp files that writers killed mid-write left in `folder` (only ours, only regular files,
    only older than `older_than_s`, so a write in progress elsewhere is never disturbed). Returns how many."""
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not _TEMP_NAME.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mtime > cutoff:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed += 1
        logger.info("removed %s, left by a write that was interrupted", entry.path)
    return removed


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """Create and open a new temp file beside `path`; never opens an existing file or follows a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_ATTEMPTS - 1):
        temp = _temp_path(path)
        try:
            return os.open(temp, flags, mode & 0o700), temp  # owner-only until the data is complete
        except FileExistsError:
            logger.warning("%s already exists (not ours): trying another temp name", temp)
    temp = _temp_path(path)
    return os.open(temp, flags, mode & 0o700), temp


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not possible on every file system, and then the data still is."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
