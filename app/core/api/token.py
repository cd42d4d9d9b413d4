"""The API token: a new random one at every engine start, in a 0600 file of a 0700 folder of this user.

`issue_token()` (the engine, at start) writes a fresh token atomically, so a token that leaked (an old copy,
a file left readable by a past version, a proxy that saw it) stops working at the next start; a token file
with loose bits or another owner is logged and replaced, never just chmod-ed and reused. A symlink where the
token file belongs is refused, by the engine and by clients (`read_token()`): whoever planted it chose what
we would write to or read from.

No aiohttp here: the CLI and `StewardClient` import this module.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from app.core import paths
from app.core.atomic import write_atomic
from app.core.errors import VramError
from app.core.private import private_dir

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32


class TokenFileUnsafe(VramError):
    """The token file is a symlink or belongs to another user: not used, not replaced."""

    code = "token_file_unsafe"

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"the API token file {path} {why}: refusing to use it",
            details={"path": str(path)},
            suggestions=[f"Remove {path}; the engine writes a new token when it starts"],
        )


def issue_token(path: Path | None = None) -> str:
    """Write a new random token to `path` (default: the state dir's api-token), 0600, and return it."""
    path = Path(path) if path is not None else paths.api_token_file()
    private_dir(path.parent)
    try:
        info: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise TokenFileUnsafe(path, f"is a symlink (to {os.readlink(path)})")
        if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.getuid():
            logger.warning(
                "API token file %s had mode %o and owner %d: the old token may be known to others; "
                "it is replaced by a new one",
                path,
                stat.S_IMODE(info.st_mode),
                info.st_uid,
            )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    write_atomic(path, token + "\n", mode=0o600)
    return token


def read_token(path: Path | None = None) -> str:
    """The token as the running engine wrote it. Raises TokenFileUnsafe for a symlink or another user's
    file, OSError when it cannot be read (FileNotFoundError: no engine has started)."""
    path = Path(path) if path is not None else paths.api_token_file()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TokenFileUnsafe(path, "is a symlink") from None
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise TokenFileUnsafe(path, f"belongs to user id {info.st_uid}, not to you")
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileUnsafe(path, "is not a regular file")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace").strip()
