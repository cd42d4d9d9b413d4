"""FreezeHolder: whole CUDA processes (ComfyUI, a plain llama-server, a PyTorch script) frozen by the driver's
checkpoint API while a game runs, and restored after, behind the holder contract (app/core/holders.py).

Each `[[servers]] kind = "freeze"` entry names an app by its executable or a command-line substring; its
processes (the matching ones and their descendants that hold VRAM) are one item, frozen and restored as a
group, all or nothing. The rules, each enforced here:
- frozen only for a game, a pause or the user's Evict now; never for pressure from unknown processes;
- before freezing: the processes must be ours (another user's need the privileged helper, not installed),
  hold no graphics context, and fit in host RAM (available memory plus free swap); a checkpoint the driver
  refuses (managed memory, ...) unlocks the whole group at once and leaves it running;
- never restored unless the admission ledger grants its footprint plus a margin first, held until the
  restore is done: a restore that runs out of VRAM leaves a process stuck for good;
- every driver step has a deadline; a process that exits while frozen is forgotten cleanly.
The driver's calls block (seconds for GiBs), so every freeze and restore runs on a thread of its own and
reports through `poll()`; the engine is never kept waiting.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import psutil

from app.core import events as ev
from app.core.errors import InsufficientVram, InvalidInput
from app.core.events import Event
from app.core.freeze.api import CheckpointDriver, CheckpointError, FreezingUnavailable, ProcessState
from app.core.freeze.checks import process_refusal
from app.core.gpu.backend import GpuBackend
from app.core.gpu.snapshot import GpuState, ProcessKind, TelemetrySnapshot
from app.core.holders import HolderRole, ModelState, ModelStatus, unsupported_verify
from app.core.residency.ledger import Ledgers
from app.core.settings import Settings
from app.core.units import MiB, format_bytes

logger = logging.getLogger(__name__)
T = TypeVar("T")

FREEZE_REASONS = frozenset({"game", "pause", "user"})  # never "pressure", "thermal", "battery", "sleep"
RESTORE_MARGIN_BYTES = 512 * MiB  # measured: a restore with ~0.5 GiB more free than the footprint succeeded
LOCK_TIMEOUT_MS = 10_000  # queued kernels drain first (1.4 s seen for ~2 s of work)
REFRESH_S = 2.0


@dataclass(frozen=True)
class FreezeRule:
    """One app to freeze: `match` is an executable name ("llama-server") or a command-line part
    ("ComfyUI/main.py")."""

    name: str
    match: str
    gpu: int = 0  # where it shows when NVML cannot tell yet


@dataclass
class _App:
    rule: FreezeRule
    state: ModelState = ModelState.UNLOADED  # RESIDENT while its processes hold VRAM; FROZEN; UNLOADED
    pids: tuple[int, ...] = ()
    gpu: int = 0
    size_bytes: int | None = None  # VRAM of its processes (what a freeze moves to RAM)
    last_error: str | None = None
    job: concurrent.futures.Future[_Done] | None = None
    reservation: str | None = None  # held from a restore's start until it is done
    frozen_at: float | None = None
    warned_pressure: bool = False
    graphics: bool = False  # one of its processes has a graphics context: never frozen
    refusal: str | None = None  # what the checks found against freezing it (app/core/freeze/checks.py)
    refused: bool = False  # a freeze was refused: not tried again until the GPU is no longer held
    held_by_user: bool = False  # frozen by `vram-steward freeze`: thawed only by the user


@dataclass(frozen=True)
class _Done:
    """What a freeze or restore job did."""

    action: str  # "freeze" | "restore"
    ok: bool
    seconds: float
    error: str | None = None
    stuck: tuple[int, ...] = ()  # processes a failed restore left checkpointed for good


@dataclass(frozen=True)
class _Found:
    pids: tuple[int, ...]
    gpu: int | None
    size_bytes: int
    graphics: bool
    refusal: str | None = None  # checks.process_refusal for one of its processes (managed memory, owner)


@dataclass
class _Listing:
    found: dict[str, _Found] = field(default_factory=dict)


def matches(rule: FreezeRule, name: str, cmdline: Sequence[str]) -> bool:
    """The rule's executable name (case-insensitive, ".exe" ignored) or a part of the command line."""
    wanted = rule.match.strip()
    if not wanted:
        return False
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower().removesuffix(".exe")
    if "/" not in wanted and " " not in wanted and base == wanted.lower().removesuffix(".exe"):
        return True
    return wanted in " ".join(cmdline)


def own_processes(rule: FreezeRule) -> list[int]:
    """PIDs of this user's processes the rule names (psutil; another user's are not ours to freeze)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    pids: list[int] = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "uids"]):
        info = proc.info
        if info["pid"] == os.getpid():
            continue
        if uid is not None and info.get("uids") is not None and info["uids"].real != uid:
            continue
        if matches(rule, info.get("name") or "", tuple(info.get("cmdline") or ())):
            pids.append(int(info["pid"]))
    return pids


class FreezeHolder:
    """The holder contract for frozen processes. `driver` opens the checkpoint driver lazily (it raises
    FreezingUnavailable on a machine that cannot freeze: the rest of the app works)."""

    name = "freeze"
    role = HolderRole.MANAGED

    def __init__(
        self,
        rules: Sequence[FreezeRule],
        *,
        backend: GpuBackend,
        ledgers: Ledgers,
        driver: Callable[[], CheckpointDriver],
        clock: Callable[[], float] = time.monotonic,
        find: Callable[[FreezeRule], list[int]] = own_processes,
        host_room_bytes: Callable[[], int] | None = None,
        run: Callable[[Callable[[], _Done]], concurrent.futures.Future[_Done]] | None = None,
        # tests: run the jobs at once
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._apps = {rule.name: _App(rule, gpu=rule.gpu) for rule in rules}
        self._backend = backend
        self._ledgers = ledgers
        self._open_driver = driver
        self._driver: CheckpointDriver | None = None
        self._clock = clock
        self._find = find
        self._host_room = host_room_bytes or _host_room_bytes
        self._run: Callable[[Callable[[], _Done]], concurrent.futures.Future[_Done]] = run or _in_thread
        self._refresh_s = refresh_s
        self._next_refresh = float("-inf")
        self._listing: concurrent.futures.Future[_Listing] | None = None
        self._pending: list[Event] = []
        self._closed = False
        self._lock = threading.Lock()  # one driver call sequence at a time

    # --- the holder contract ------------------------------------------------------------------

    def models(self) -> Sequence[ModelStatus]:
        return [
            ModelStatus(
                name=app.rule.name,
                gpu=app.gpu,
                size_bytes=app.size_bytes,
                state=app.state,
                holder=self.name,
                priority=1000,  # under pressure, models go first (an app is frozen only for games anyway)
                last_error=app.last_error,
                held_by_user=app.held_by_user,
            )
            for app in self._apps.values()
            if app.state != ModelState.UNLOADED or app.pids
        ]

    def pids(self) -> set[int]:
        return {pid for app in self._apps.values() for pid in app.pids}

    def start_load(self, model: str) -> None:
        """Restore a frozen app: only once the ledger grants its footprint plus a margin (held until the
        restore is done), never into a GPU that would run out mid-restore."""
        app = self._get(model)
        if app.state != ModelState.FROZEN or app.job is not None:
            return
        app.held_by_user = False
        need = (app.size_bytes or 0) + RESTORE_MARGIN_BYTES
        try:
            reservation = self._ledgers.for_gpu(app.gpu).reserve(need, holder=f"freeze:{model}")
        except InsufficientVram as exc:
            app.last_error = (
                f"stays frozen: restoring needs {format_bytes(need)} free on GPU {app.gpu} "
                f"({exc.message}); stop the app if it should not wait"
            )
            self._pending.append(
                ev.LoadRefused(
                    at=self._clock(),
                    model=model,
                    gpu=app.gpu,
                    reason=exc.code,
                    need_bytes=exc.needed_bytes,
                    available_bytes=exc.available_bytes,
                )
            )
            raise
        app.reservation = reservation.id
        app.state = ModelState.LOADING
        pids = app.pids
        app.job = self._run(lambda: self._restore(pids))

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]:
        """Freeze for a game, a pause or the user; refuse (once, with the reason) for anything else."""
        for name in models:
            app = self._apps.get(name)
            if app is None or app.state != ModelState.RESIDENT or app.job is not None or app.refused:
                continue
            if reason not in FREEZE_REASONS:
                if not app.warned_pressure:
                    app.warned_pressure = True
                    logger.info("%s is frozen only for games and on request, not for %s", name, reason)
                continue
            refusal = self._refusal(app)
            if refusal is not None:
                app.refused = True
                app.last_error = f"not frozen: {refusal}"
                self._pending.append(ev.EngineError(at=self._clock(), where="freeze", message=app.last_error))
                continue
            app.state = ModelState.FROZEN  # from now on, as the engine sees it; the job confirms or undoes
            app.frozen_at = self._clock()
            pids = app.pids
            app.job = self._run(lambda pids=pids: self._freeze(pids))  # type: ignore[misc]
        return []

    def unload(self, model: str) -> Sequence[Event]:
        """The user's `vram-steward freeze NAME`: frozen now, whatever runs, and kept frozen until the
        user thaws it (`vram-steward thaw NAME`, which is a load)."""
        app = self._get(model)
        events: list[Event] = []
        if app.state != ModelState.FROZEN:
            app.refused = False  # the user asks now: try again even after a refusal
            events.extend(self.evict([model], "user"))
        app.held_by_user = app.state == ModelState.FROZEN  # a refusal is in last_error
        return events

    def poll(self) -> Sequence[Event]:
        events, self._pending = self._pending, []
        if self._closed:
            return events
        for app in self._apps.values():
            self._collect(app, events)
        self._collect_listing()
        if self._clock() >= self._next_refresh and self._listing is None:
            self._next_refresh = self._clock() + self._refresh_s
            self._listing = _in_thread(self._list)  # a /proc walk: off the engine thread
        return events

    def set_hold(self, reason: str | None) -> None:
        """A frozen process cannot allocate (nothing to free again while held); when the hold ends, a
        refused freeze may be tried again next time."""
        if reason is None:
            for app in self._apps.values():
                app.refused = False

    def verify(self, model: str) -> concurrent.futures.Future[Event]:
        return unsupported_verify(model, "its own process (a frozen app)")

    def update_settings(self, settings: Settings) -> None:
        pass  # the rules are read at start (a changed rule applies at the next start)

    def close(self) -> Sequence[Event]:
        """Leave nothing frozen behind: restore what is frozen (bounded; a process that cannot be restored
        is reported, and stays frozen until its user stops it)."""
        self._closed = True
        events: list[Event] = []
        for app in self._apps.values():
            if app.job is not None:
                try:
                    app.job.result(timeout=60)
                except concurrent.futures.TimeoutError:
                    logger.error("%s: a freeze or restore did not end within 60 s", app.rule.name)
                self._collect(app, events)
            if app.state == ModelState.FROZEN and app.pids:
                done = self._restore(app.pids)
                if not done.ok:
                    logger.error("%s stays frozen after VRAM Steward exits: %s", app.rule.name, done.error)
        return events

    # --- the jobs (a thread of their own each) -------------------------------------------------

    def _driver_now(self) -> CheckpointDriver:
        if self._driver is None:
            self._driver = self._open_driver()
        return self._driver

    def _freeze(self, pids: tuple[int, ...]) -> _Done:
        started = time.monotonic()
        with self._lock:
            try:
                driver = self._driver_now()
            except FreezingUnavailable as exc:
                return _Done("freeze", False, 0.0, str(exc))
            locked: list[int] = []
            checkpointed: list[int] = []
            try:
                for pid in pids:
                    driver.lock(pid, LOCK_TIMEOUT_MS)
                    locked.append(pid)
                for pid in pids:
                    driver.checkpoint(pid)
                    checkpointed.append(pid)
            except CheckpointError as exc:  # all or nothing: the group runs on as it was
                for pid in checkpointed:
                    _quietly(driver.restore, pid)
                for pid in locked:
                    _quietly(driver.unlock, pid)
                return _Done("freeze", False, time.monotonic() - started, _why(exc))
        return _Done("freeze", True, time.monotonic() - started)

    def _restore(self, pids: tuple[int, ...]) -> _Done:
        started = time.monotonic()
        stuck: list[int] = []
        error: str | None = None
        with self._lock:
            try:
                driver = self._driver_now()
            except FreezingUnavailable as exc:
                return _Done("restore", False, 0.0, str(exc))
            for pid in pids:
                if not psutil.pid_exists(pid):
                    continue  # exited while frozen: nothing to restore
                try:
                    if driver.state(pid) == ProcessState.CHECKPOINTED:
                        driver.restore(pid)
                    if driver.state(pid) == ProcessState.LOCKED:
                        driver.unlock(pid)
                except CheckpointError as exc:
                    stuck.append(pid)
                    error = _why(exc)
        return _Done("restore", not stuck, time.monotonic() - started, error, tuple(stuck))

    def _list(self) -> _Listing:
        """Which processes each rule names now, where they hold VRAM and how much (NVML)."""
        snapshot = self._backend.sample()
        listing = _Listing()
        for name, app in list(self._apps.items()):
            try:
                pids = tuple(self._find(app.rule))
            except Exception:
                logger.exception("finding the processes of %s failed", name)
                continue
            per_gpu: dict[int, int] = {}
            holding: set[int] = set()
            graphics = False
            for gpu in snapshot.gpus:
                if gpu.state != GpuState.OK:
                    continue
                for proc in gpu.processes:
                    if proc.pid in pids:
                        per_gpu[gpu.index] = per_gpu.get(gpu.index, 0) + (proc.used_bytes or 0)
                        holding.add(proc.pid)
                        graphics = graphics or proc.kind in (ProcessKind.GRAPHICS, ProcessKind.BOTH)
            where = max(per_gpu, key=lambda g: per_gpu[g]) if per_gpu else None
            refusal = next(
                (r for r in (_process_refusal(pid, snapshot) for pid in sorted(holding)) if r), None
            )
            listing.found[name] = _Found(
                tuple(sorted(holding)), where, sum(per_gpu.values()), graphics, refusal
            )
        return listing

    # --- the engine thread ---------------------------------------------------------------------

    def _collect_listing(self) -> None:
        future = self._listing
        if future is None or not future.done():
            return
        self._listing = None
        try:
            listing = future.result()
        except Exception:
            logger.exception("listing frozen apps failed")
            return
        for name, found in listing.found.items():
            app = self._apps[name]
            if app.job is not None:
                continue
            if app.state == ModelState.FROZEN:  # a frozen process is not in NVML: keep what we froze
                alive = tuple(pid for pid in app.pids if psutil.pid_exists(pid))
                if not alive:
                    logger.info("%s exited while frozen; forgotten", name)
                    app.state, app.pids, app.size_bytes, app.frozen_at = ModelState.UNLOADED, (), None, None
                else:
                    app.pids = alive
                continue
            app.pids = found.pids
            app.graphics = found.graphics
            app.refusal = found.refusal
            if found.pids and found.size_bytes > 0:
                app.state = ModelState.RESIDENT
                app.size_bytes = found.size_bytes
                app.gpu = found.gpu if found.gpu is not None else app.gpu
            else:
                app.state, app.size_bytes = ModelState.UNLOADED, None

    def _collect(self, app: _App, events: list[Event]) -> None:
        future = app.job
        if future is None or not future.done():
            return
        app.job = None
        try:
            done = future.result()
        except Exception as exc:  # a bug, not a driver refusal: the app is as it was
            logger.exception("%s: the freeze job failed", app.rule.name)
            done = _Done("freeze", False, 0.0, f"{type(exc).__name__}: {exc}")
        now, size = self._clock(), app.size_bytes or 0
        if done.action == "freeze":
            if done.ok:
                app.last_error = None
                logger.info(
                    "%s frozen: %s moved to RAM in %.1f s", app.rule.name, format_bytes(size), done.seconds
                )
                events.append(
                    ev.VramDeallocated(at=now, model=app.rule.name, gpu=app.gpu, bytes=size, reason="frozen")
                )
            else:
                app.state = ModelState.RESIDENT
                app.frozen_at = None
                app.refused = True
                app.last_error = f"not frozen: {done.error}"
                events.append(
                    ev.EngineError(at=now, where="freeze", message=f"{app.rule.name} {app.last_error}")
                )
            return
        if app.reservation is not None:
            self._ledgers.for_gpu(app.gpu).release(app.reservation)
            app.reservation = None
        if done.ok:
            app.state, app.last_error, app.frozen_at = ModelState.RESIDENT, None, None
            logger.info("%s restored in %.1f s", app.rule.name, done.seconds)
            events.append(ev.VramAllocated(at=now, model=app.rule.name, gpu=app.gpu, bytes=size))
        else:
            app.state = ModelState.FAILED
            app.last_error = (
                f"could not be restored ({done.error}); pid {', '.join(map(str, done.stuck))} is stuck: "
                "stop the app and start it again"
            )
            events.append(
                ev.VramAllocationFailed(
                    at=now,
                    model=app.rule.name,
                    gpu=app.gpu,
                    bytes=size,
                    reason="restore_failed",
                    message=app.last_error,
                )
            )

    def _refusal(self, app: _App) -> str | None:
        """Why this app must not be frozen now, or None."""
        if not app.pids:
            return "its processes hold no VRAM"
        if app.graphics:
            return "it has a graphics context (the driver cannot checkpoint graphics)"
        if app.refusal:
            return app.refusal
        room = self._host_room()
        if (app.size_bytes or 0) > room:
            return (
                f"its {format_bytes(app.size_bytes)} would not fit in host RAM "
                f"({format_bytes(room)} available with swap)"
            )
        return None

    def _get(self, model: str) -> _App:
        app = self._apps.get(model)
        if app is None:
            raise InvalidInput(f"unknown app {model!r}", field_name="model", value=model)
        return app


def _process_refusal(pid: int, snapshot: TelemetrySnapshot) -> str | None:
    try:
        return process_refusal(pid, snapshot)
    except (ProcessLookupError, OSError):
        return None  # gone meanwhile: the next listing forgets it


def _host_room_bytes() -> int:
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return int(memory.available + swap.free)


def _in_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, name="freeze", daemon=True).start()
    return future


def _quietly(call: Callable[[int], None], pid: int) -> None:
    try:
        call(pid)
    except CheckpointError as exc:
        logger.warning("undoing a freeze of pid %d: %s", pid, exc)


def _why(exc: CheckpointError) -> str:
    if exc.not_permitted:
        return f"pid {exc.pid} belongs to another user (freezing it needs the privileged helper)"
    if exc.code == 801:
        return f"the driver cannot checkpoint pid {exc.pid} (managed memory or CUDA IPC: {exc.name})"
    if exc.out_of_memory:
        return f"not enough free VRAM to restore pid {exc.pid}"
    return str(exc)


__all__ = ["FREEZE_REASONS", "FreezeHolder", "FreezeRule", "matches", "own_processes"]
