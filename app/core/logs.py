"""Logging: a rotating file in the platform log dir, and the terminal (warnings, or everything with -v).

The log folder is 0700 and the files 0600 (private.py): they name models, games and paths. Repeated records
(the same message template from the same place) are rate-limited, so a flood of connection errors from a
hostile client cannot rotate the log's history away in seconds: after BURST records in WINDOW_S, the rest of
that window is counted and summed up in one line when the next one gets through.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from app.core import paths
from app.core.errors import VramError
from app.core.private import FILE_MODE, private_dir, secure_app_dirs

LOG_MAX_BYTES = 2 * 1024 * 1024
LOG_BACKUPS = 3
BURST = 20  # records of one kind let through per window
WINDOW_S = 60.0
_MAX_KINDS = 4096  # distinct kinds remembered; forgotten wholesale beyond this (a flood of distinct ones)


class RepeatLimiter(logging.Filter):
    """Lets through at most `burst` records of each kind (logger, level, message template, source line)
    per `window_s`; counts the rest and prefixes the next record let through with how many were dropped."""

    def __init__(
        self, burst: int = BURST, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[Any, ...], list[float]] = {}  # kind -> [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_repeat_limiter_passed", None)  # one filter on several handlers
        if decided is not None:
            return bool(decided)
        passed = self._decide(record)
        record._repeat_limiter_passed = passed  # type: ignore[attr-defined]
        return passed

    def _decide(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg), record.pathname, record.lineno)
        now = self.clock()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None or now - entry[0] >= self.window_s:
                dropped = int(entry[2]) if entry is not None else 0
                if len(self._kinds) >= _MAX_KINDS:
                    self._kinds.clear()
                self._kinds[kind] = [now, 1, 0]
                if dropped:
                    record.msg = f"[{dropped} more like this were not logged] {record.msg}"
                return True
            if entry[1] < self.burst:
                entry[1] += 1
                return True
            entry[2] += 1
            return False


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files are created 0600 (never through a symlink), whatever the umask."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.baseFilename, flags, FILE_MODE)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(*, verbose: bool = False) -> None:
    root = logging.getLogger()
    if getattr(root, "_vram_steward_configured", False):
        return
    root.setLevel(logging.DEBUG)
    limiter = RepeatLimiter()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(limiter)
    root.addHandler(console)
    secure_app_dirs()  # logs what it tightens, so after the console handler exists
    try:
        path = paths.log_file()
        private_dir(path.parent)
        handler = PrivateRotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
        )
        handler.addFilter(limiter)
        root.addHandler(handler)
    except (OSError, VramError) as exc:  # a read-only home must not stop the app
        logging.getLogger(__name__).warning("cannot write the log file: %s", exc)
    root._vram_steward_configured = True  # type: ignore[attr-defined]
