"""One engine per user: a lock file in the per-user runtime folder, held by the tray app or the daemon.

The engine that runs holds an exclusive `flock` on `paths.engine_lock_file()` for its whole life and writes
its pid and kind ("tray" or "daemon") into the file. The kernel drops the lock when the process ends, however
it ends, so a killed engine never blocks the next one: its leftover pid is simply overwritten. A second
engine finds the lock taken, reads who holds it and refuses with `AlreadyRunning`, which names the holder
and how to stop it.

The record is written in place, not through `atomic.write_atomic`: replacing the file would give it a new
inode, and the lock belongs to the old one. Readers retry briefly while the new holder is still writing.

The folder is created 0700 and must belong to this user; a folder with looser bits is tightened, and one
owned by someone else is refused (nobody else may plant the tray's socket or the lock there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.core import paths
from app.core.errors import VramError

try:  # POSIX; elsewhere (Windows) there is no second-engine check yet
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

EngineKind = Literal["tray", "daemon"]
SYSTEMD_UNIT = "vram-steward"  # resources/systemd/vram-steward.service
READ_RETRY_S = 1.0  # how long a reader waits for a new holder to finish writing its record


@dataclass(frozen=True)
class EngineHolder:
    """Who holds the engine lock: its pid, its kind and when it took the lock (Unix time)."""

    pid: int
    kind: str
    started_at: float | None = None

    def describe(self) -> str:
        what = {"tray": "the tray app", "daemon": "the daemon (`vram-steward daemon`)"}.get(
            self.kind, f"a {self.kind}"
        )
        return f"{what}, pid {self.pid}"

    def stop_hint(self) -> str:
        if self.kind == "tray":
            return f"Quit the tray app from its menu (Quit), or stop it with `kill -TERM {self.pid}`"
        return (
            f"Stop the daemon with `systemctl --user stop {SYSTEMD_UNIT}` when it runs as the systemd unit, "
            f"otherwise with `kill -TERM {self.pid}` (it frees its VRAM first)"
        )


class AlreadyRunning(VramError):
    """Another engine (tray app or daemon) of this user holds the lock."""

    code = "already_running"
    http_status = 409

    def __init__(self, holder: EngineHolder | None, lock_file: Path, *, wanted: str) -> None:
        self.holder = holder
        self.lock_file = lock_file
        who = holder.describe() if holder is not None else "another process (it did not say which)"
        starting = "the tray app" if wanted == "tray" else "the daemon"
        super().__init__(
            f"VRAM Steward is already running for this user: {who}. Only one engine may manage the GPU, "
            f"so {starting} does not start (lock {lock_file}).",
            details={
                "pid": holder.pid if holder else None,
                "kind": holder.kind if holder else None,
                "lock_file": str(lock_file),
            },
            suggestions=[
                "Use the running one: `vram-steward status`, `vram-steward pause|resume|evict`",
                holder.stop_hint() if holder is not None else f"Find the holder with `fuser -v {lock_file}`",
            ],
        )


class RuntimeDirError(VramError):
    code = "runtime_dir_unsafe"


def private_runtime_dir(path: Path | None = None) -> Path:
    """The runtime folder, created 0700 if missing; refuses one that belongs to another user."""
    folder = path or paths.runtime_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(f"{folder} is not a folder (a symlink or a file is in the way)")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise RuntimeDirError(
            f"{folder} belongs to user id {info.st_uid}, not to you: refusing to keep the engine lock there",
            suggestions=["Set XDG_RUNTIME_DIR to a folder of yours, or remove that folder"],
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        logger.warning("runtime folder %s was open to others; fixed to 0700", folder)
        os.chmod(folder, 0o700)
    return folder


def _parse(text: str) -> EngineHolder | None:
    try:
        data: Any = json.loads(text)
        started = data.get("started_at")
        return EngineHolder(
            pid=int(data["pid"]),
            kind=str(data["kind"]),
            started_at=float(started) if started is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class EngineLock:
    """The per-user engine lock. `acquire(kind)` takes it or raises AlreadyRunning; `release()` gives it
    back (also done by the kernel when the process ends). Not inherited by child processes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.engine_lock_file()
        self._fd: int | None = None
        self.kind: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, kind: EngineKind) -> EngineLock:
        if self._fd is not None:
            return self
        private_runtime_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise AlreadyRunning(read_holder(self.path), self.path, wanted=kind) from None
            else:  # pragma: no cover - not on Linux
                logger.warning("no flock on this platform: a second engine is not detected")
            record = json.dumps({"pid": os.getpid(), "kind": kind, "started_at": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode() + b"\n", 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.kind = kind
        logger.info("engine lock %s taken (%s, pid %d)", self.path, kind, os.getpid())
        return self

    def release(self) -> None:
        """Empty the record and drop the lock. The file stays (removing it would race a new holder)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> EngineLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_engine_lock(kind: EngineKind, path: Path | None = None) -> EngineLock:
    """Take this user's engine lock for a `kind` engine, or raise AlreadyRunning naming the holder."""
    return EngineLock(path).acquire(kind)


def read_holder(path: Path | None = None, *, retry_s: float = READ_RETRY_S) -> EngineHolder | None:
    """Who holds the engine lock now, from its record, or None when nobody does. A record left by an engine
    that was killed names a process that is gone (or a newer one that reused its pid): not a holder.
    Waits up to `retry_s` while the file is empty or half written (a holder that is still writing).

    It reads the record and never probes the lock itself: a probe would make a starting engine's own
    attempt fail for a moment."""
    path = path or paths.engine_lock_file()
    deadline = time.monotonic() + retry_s
    while True:
        try:
            holder = _parse(path.read_text())
        except OSError:
            return None
        if holder is not None:
            return holder if pid_alive_since(holder.pid, holder.started_at) else None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def pid_alive_since(pid: int, since: float | None) -> bool:
    """True when process `pid` runs and was already running at Unix time `since` (None: any time), so a
    pid reused by a newer process does not count."""
    import psutil

    try:
        process = psutil.Process(pid)
        created = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped by its parent
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # it exists; we may not see its details
    return since is None or created <= since + 1.0  # create_time has a coarse clock


def running_engine(path: Path | None = None) -> EngineHolder | None:
    """The engine of this user that runs now (tray or daemon), or None."""
    return read_holder(path)
