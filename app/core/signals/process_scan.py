"""A rate-limited walk of the process table, shared by the Steam and exclusive-app signal sources.

A process-table walk costs far more than an NVML call, so the table is read at most once every `interval_s`
(Settings.process_check_interval_secs) on the injected clock; on Linux it reads /proc directly (psutil
costs about 6x more per process), and command lines are read only for processes whose name asks for it
(Steam's `reaper`). Each process's owner is read too (one stat of /proc/PID): a signal counts only when the
process is this user's (another user's `reaper SteamLaunch` or `blender` must not evict our models).
Processes that vanish or deny access mid-walk are skipped or reported with what could be read.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from app.core.policy.signals import GameSignal
from app.core.settings import Settings

logger = logging.getLogger(__name__)

_ATTRS = ["pid", "ppid", "name", "exe", "create_time"]
_ATTRS_WITH_UIDS = [*_ATTRS, "uids"] if hasattr(psutil.Process, "uids") else _ATTRS  # not on Windows


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int | None
    name: str
    exe: str | None  # None when unreadable (another user's process, a kernel thread)
    create_time: float | None  # Unix time
    cmdline: tuple[str, ...] | None = None  # read only for names in ProcessScanner.cmdline_names
    uid: int | None = None  # effective uid (_read_owner); None: not read (simulated, or no uids here)

    def owned_by_us(self) -> bool:
        """The process runs as this user, or its owner was not read (a fake or simulated table, or a
        platform without uids). The readers never give a command line without its uid, so a command-line
        signal (Steam's reaper) is matched only on processes of this user."""
        return self.uid is None or not hasattr(os, "getuid") or self.uid == os.getuid()


@dataclass(frozen=True)
class ProcessTable:
    """One scan's result. `generation` grows by one per scan, so sources can cache what they derive."""

    processes: tuple[ProcessInfo, ...]
    scanned_at: float  # on the injected clock
    generation: int
    duration_s: float  # how long the walk took (on the injected clock)

    def children_of(self, pid: int) -> tuple[ProcessInfo, ...]:
        return tuple(p for p in self.processes if p.ppid == pid)


def read_process_table(cmdline_names: frozenset[str]) -> list[ProcessInfo]:
    """Walk the process table once: straight from /proc on Linux (about 6x cheaper than psutil there),
    through psutil elsewhere or when /proc cannot be read."""
    if _PROC_USABLE:
        try:
            return _INCREMENTAL(cmdline_names)
        except OSError as exc:
            logger.debug("reading /proc directly failed (%s); using psutil", exc)
    return read_with_psutil(cmdline_names)


def read_with_psutil(cmdline_names: frozenset[str]) -> list[ProcessInfo]:
    """The portable walk (psutil)."""
    found: list[ProcessInfo] = []
    for proc in psutil.process_iter(_ATTRS_WITH_UIDS, ad_value=None):
        info = proc.info
        name = info.get("name") or ""
        cmdline: tuple[str, ...] | None = None
        uids = info.get("uids")
        uid: int | None = int(uids.effective) if uids is not None else None
        if name.lower() in cmdline_names:
            try:
                cmdline = tuple(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # it ended while we looked
            except psutil.AccessDenied:
                cmdline = None
            if uid is None and _ATTRS_WITH_UIDS is not _ATTRS:
                cmdline = None  # whose it is cannot be told: not matched on
        found.append(
            ProcessInfo(
                pid=int(info["pid"]),
                ppid=info.get("ppid"),
                name=name,
                exe=info.get("exe") or None,
                create_time=info.get("create_time"),
                cmdline=cmdline,
                uid=uid,
            )
        )
    return found


_PROC_USABLE = sys.platform.startswith("linux") and os.path.exists("/proc/self/stat")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _PROC_USABLE else 100
_COMM_MAX = 15  # the kernel truncates process names to 15 characters


def read_proc_directly(cmdline_names: frozenset[str]) -> list[ProcessInfo]:
    """The Linux walk: one read of /proc/PID/stat and one readlink of /proc/PID/exe per process, with the
    same names as psutil gives (a truncated name is completed from the command line, as psutil does)."""
    boot_time = psutil.boot_time()
    found: list[ProcessInfo] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        info = _read_one(int(entry.name), boot_time, cmdline_names)
        if info is not None:
            found.append(info)
    return found


def _read_stat(pid: int, boot_time: float) -> tuple[str, int, float | None] | None:
    """(name as the kernel keeps it, ppid, start time) from /proc/PID/stat; None when the process is gone.
    os.open/os.read: half the cost of open() with its buffered reader, and this runs for every process."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None  # it ended while we looked
    try:
        stat = os.read(fd, 4096).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    open_paren, close_paren = stat.find("("), stat.rfind(")")
    fields = stat[close_paren + 2 :].split(maxsplit=20)
    try:
        return stat[open_paren + 1 : close_paren], int(fields[1]), boot_time + int(fields[19]) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return stat[open_paren + 1 : close_paren], 0, None


def _read_one(
    pid: int,
    boot_time: float,
    cmdline_names: frozenset[str],
    stat: tuple[str, int, float | None] | None = None,
) -> ProcessInfo | None:
    stat = stat or _read_stat(pid, boot_time)
    if stat is None:
        return None
    name, ppid, create_time = stat
    try:
        exe: str | None = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)") or None
    except OSError:
        exe = None  # another user's process, a kernel thread, or gone
    cmdline: tuple[str, ...] | None = None
    if len(name) >= _COMM_MAX or name.lower() in cmdline_names:
        cmdline = _read_cmdline(pid)
        if len(name) >= _COMM_MAX and cmdline:
            full = os.path.basename(cmdline[0])
            name = full if full.startswith(name) else name
        if name.lower() not in cmdline_names:
            cmdline = None
    uid = _read_owner(pid)
    if cmdline is not None and uid is None:
        cmdline = None  # whose it is cannot be told: not matched on
    return ProcessInfo(
        pid=pid, ppid=ppid, name=name, exe=exe, create_time=create_time, cmdline=cmdline, uid=uid
    )


def _read_owner(pid: int) -> int | None:
    """Whose process this is: the owner of /proc/PID, which is the process's effective uid (what `ps`
    shows as USER), one stat: about 2 us against 15 us for parsing /proc/PID/status. Unlike the files in
    it, the directory keeps that owner when the process is not dumpable (prctl(PR_SET_DUMPABLE, 0), as
    anti-cheat and sandboxes do). None when the process is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None  # it ended while we looked


class IncrementalProcReader:
    """The Linux walk, reading only processes that are new since the last walk: a listing of /proc costs
    a fraction of reading every process's stat and exe, and between two walks a second apart almost every
    process is the same. A new process is read again on the walk after (a fork is seen before its exec
    gives it its name). Every `full_every` walks each known process's stat is checked (one read, no exe
    link, no command line): one whose name, parent or start time changed is read again, which catches a
    later exec (a launcher script that execs the game), a reused pid and a changed parent within
    `full_every` walks. When the names whose command line we want change, everything is read again."""

    def __init__(self, full_every: int = 5) -> None:
        self.full_every = full_every
        self.walks = 0
        self.reads = 0  # processes read in full, for tests and measurements
        self.checks = 0  # processes whose stat alone was checked
        self._known: dict[int, ProcessInfo] = {}
        self._stats: dict[int, tuple[str, int, float | None]] = {}  # as last read, to compare
        self._young: set[int] = set()  # read for the first time on the last walk: read once more
        self._names: frozenset[str] | None = None
        self._boot_time: float | None = None
        self._lock = threading.Lock()

    def __call__(self, cmdline_names: frozenset[str]) -> list[ProcessInfo]:
        with self._lock:
            if self._boot_time is None:  # fixed for the life of the system; psutil reads /proc/stat
                self._boot_time = psutil.boot_time()
            boot_time = self._boot_time
            reread_all = cmdline_names != self._names
            check = self.walks % self.full_every == 0
            self.walks += 1
            self._names = cmdline_names
            pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
            known = {} if reread_all else self._known
            young = self._young
            table: dict[int, ProcessInfo] = {}
            stats: dict[int, tuple[str, int, float | None]] = {}
            fresh: set[int] = set()
            for pid in pids:
                info = None if pid in young else known.get(pid)
                stat = self._stats.get(pid) if info is not None else None
                if info is not None and check:
                    self.checks += 1
                    now = _read_stat(pid, boot_time)
                    if now is None:
                        continue  # it ended
                    if now != stat:
                        info = None  # exec'd, re-parented or a reused pid: read it again
                    stat = now
                if info is None:
                    stat = stat or _read_stat(pid, boot_time)
                    info = None if stat is None else _read_one(pid, boot_time, cmdline_names, stat)
                    self.reads += 1
                    if self.walks > 1 and pid not in self._known:  # started since the last walk
                        fresh.add(pid)
                if info is not None and stat is not None:
                    table[pid] = info
                    stats[pid] = stat
            self._known = table
            self._stats = stats
            self._young = fresh
            return list(table.values())


_INCREMENTAL = IncrementalProcReader()


def _read_cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline_file:
            raw = cmdline_file.read()
    except OSError:
        return None
    return tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")) if raw else ()


class ProcessScanner:
    """The latest process table, rescanned when older than `interval_s`. Thread-safe: concurrent callers
    share one walk instead of walking twice."""

    def __init__(
        self,
        *,
        interval_s: float,
        clock: Callable[[], float],
        cmdline_names: Iterable[str] = ("reaper",),
        read: Callable[[frozenset[str]], Iterable[ProcessInfo]] = read_process_table,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"process_check_interval_secs must be >= 0, got {interval_s!r}")
        self.interval_s = interval_s
        self.clock = clock
        self.cmdline_names = frozenset(n.lower() for n in cmdline_names)
        self._read = read
        self._lock = threading.Lock()
        self._table: ProcessTable | None = None

    def table(self) -> ProcessTable:
        """The current table; walks the process table first when the last walk is `interval_s` old."""
        with self._lock:
            now = self.clock()
            if self._table is None or now - self._table.scanned_at >= self.interval_s:
                self._table = self._scan(now)
            return self._table

    def refresh(self) -> ProcessTable:
        """Walk now, whatever the interval (the engine calls it when it wants a fresh look)."""
        with self._lock:
            self._table = self._scan(self.clock())
            return self._table

    def want_cmdline(self, *names: str) -> None:
        """Also read command lines of processes with these names (from the next walk on)."""
        with self._lock:
            self.cmdline_names = self.cmdline_names | {n.lower() for n in names}

    def _scan(self, now: float) -> ProcessTable:
        generation = self._table.generation + 1 if self._table else 1
        try:
            processes = tuple(self._read(self.cmdline_names))
        except Exception:
            logger.exception("reading the process table failed; game signals from it are paused")
            processes = self._table.processes if self._table else ()
        return ProcessTable(
            processes=processes,
            scanned_at=now,
            generation=generation,
            duration_s=max(0.0, self.clock() - now),
        )


class TableSignalSource:
    """Base of the game-signal sources that read the shared process table (Steam, exclusive apps): active()
    derives signals once per scan generation and returns the cached result in between."""

    def __init__(self, scanner: ProcessScanner) -> None:
        self.scanner = scanner
        self._lock = threading.Lock()
        self._generation = -1
        self._signals: tuple[GameSignal, ...] = ()
        self._first_seen: dict[tuple[int, float | None], float] = {}

    def _enabled(self) -> bool:
        return True

    def active(self) -> tuple[GameSignal, ...]:
        with self._lock:
            if not self._enabled():
                return ()
        table = self.scanner.table()
        with self._lock:
            if table.generation != self._generation:
                self._signals = self._signals_from(table)
                self._generation = table.generation
            return self._signals

    def update_settings(self, settings: Settings) -> None:
        """The shared scanner walks at the new process_check_interval_secs from its next walk."""
        self.scanner.interval_s = settings.process_check_interval_secs

    def close(self) -> None:
        with self._lock:
            self._signals = ()

    def _signals_from(self, table: ProcessTable) -> tuple[GameSignal, ...]:
        raise NotImplementedError
