"""SimulatedBackend: replays a scenario (see scenario.py) as if NVML were reporting it.

Time is the scenario's: the injected `clock` returns scenario seconds (tests pass a settable ManualClock;
the app passes nothing and gets a monotonic clock that starts at 0 when the backend is made).

The simulator also accounts OUR allocations: in simulation the residency code calls `allocate()`/`free()`
instead of CUDA, and those bytes appear in every sample as a compute process with our pid. Foreign
processes take memory in the order they appeared (the earliest first); when one wants more than is left,
it is clamped to what is left and the shortfall is recorded in `failed_allocations`: that is how a test
asserts "our models were evicted before the game's allocation would have failed".
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from app.core.errors import GpuUnavailable
from app.core.events import Event, GameEnded, GameStarted, GpuLost
from app.core.gpu.scenario import Scenario, ScenarioGpu, TimelineEvent, load_scenario
from app.core.gpu.snapshot import (
    BackendState,
    GpuProcess,
    GpuSnapshot,
    GpuState,
    ProcessKind,
    TelemetrySnapshot,
)
from app.core.units import format_bytes

logger = logging.getLogger(__name__)


class ManualClock:
    """A clock that moves only when told to (set / advance): for the simulator, replays, `status --at` and
    tests."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def set(self, at_s: float) -> None:
        self.now_s = at_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass(frozen=True)
class SimulatedGameSignal:
    """A game signal that the scenario says is active (what GameMode, Steam or the app list would report)."""

    name: str
    source: str  # gamemode | steam | exclusive_app
    pid: int | None
    app_id: str | None
    started_at_s: float

    @property
    def started_at(self) -> float:
        """Same as started_at_s, under the name GameSignal uses."""
        return self.started_at_s


@dataclass(frozen=True)
class SimulatedProcess:
    """A foreign process of the scenario that is running at some instant: what a process-table walk would
    find (the exclusive-app list is matched against these in simulation, as against /proc on a real
    machine)."""

    pid: int
    name: str
    gpu: int
    started_at_s: float  # scenario seconds; 0 for the processes present from the start


class FailedAllocation(NamedTuple):
    """A foreign process wanted more VRAM than the GPU could give it at scenario time `at`.

    `free_bytes` is the most it could hold then (what it held plus what was free for it).
    """

    at: float
    gpu: int
    pid: int
    wanted_bytes: int
    free_bytes: int


class SimulatedOutOfMemory(MemoryError):
    """Our allocation does not fit in the simulated GPU's free VRAM (as cupy's OutOfMemoryError would say)."""

    def __init__(self, *, gpu: int, pid: int, requested_bytes: int, free_bytes: int) -> None:
        self.gpu = gpu
        self.pid = pid
        self.requested_bytes = requested_bytes
        self.free_bytes = free_bytes
        super().__init__(
            f"Out of memory on simulated GPU {gpu}: pid {pid} asked for {format_bytes(requested_bytes)}, "
            f"{format_bytes(free_bytes)} free"
        )


@dataclass
class _Process:
    pid: int
    name: str
    gpu: int
    kind: ProcessKind
    order: int  # when it appeared: earlier processes get memory first
    used_bytes: int
    ramp: tuple[float, int, int, float] | None = None  # (start_s, from_bytes, to_bytes, duration_s)
    started_at_s: float = 0.0

    def wanted_bytes(self, at_s: float) -> int:
        if self.ramp is None:
            return self.used_bytes
        start_s, from_bytes, to_bytes, duration_s = self.ramp
        if duration_s <= 0 or at_s >= start_s + duration_s:
            return to_bytes
        fraction = max(0.0, (at_s - start_s) / duration_s)
        return round(from_bytes + (to_bytes - from_bytes) * fraction)


@dataclass
class _GpuWorld:
    lost: bool = False
    lost_message: str | None = None
    temperature_c: int | None = None
    utilization_percent: int | None = None


@dataclass
class _World:
    """The scenario's state at one instant, rebuilt by replaying the timeline up to it."""

    processes: dict[int, _Process]
    gpus: dict[int, _GpuWorld]
    signals: dict[str, SimulatedGameSignal]


@dataclass
class _OurAllocation:
    name: str
    nbytes: int


class SimulatedBackend:
    name = "simulated"

    def __init__(self, scenario: Scenario, clock: Callable[[], float] | None = None) -> None:
        self.scenario = scenario
        self._clock: Callable[[], float] = clock or _monotonic_from_zero()
        self._lock = threading.Lock()
        self._ours: dict[tuple[int, int], _OurAllocation] = {}  # (gpu, pid) -> what we hold
        self._times = [e.at_s for e in scenario.timeline]
        self._last_failure: dict[tuple[int, int], tuple[int, int]] = {}
        self.failed_allocations: list[FailedAllocation] = []

    @classmethod
    def from_file(cls, path: str | Path, clock: Callable[[], float] | None = None) -> SimulatedBackend:
        """A scenario file, or the bare name of a shipped scenario ("game-launch"). Raises ScenarioError."""
        return cls(load_scenario(path), clock=clock)

    def now(self) -> float:
        """Scenario seconds on the backend's clock."""
        return self._clock()

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Replace the clock (the engine's wiring shares one simulated clock between all its parts)."""
        self._clock = clock

    # --- GpuBackend ---------------------------------------------------------------------------------

    def sample(self) -> TelemetrySnapshot:
        return self.sample_at(self._clock())

    def sample_at(self, at_s: float, *, record: bool = True) -> TelemetrySnapshot:
        """The snapshot at scenario second `at_s`, whatever the clock says (`status --at`). `record=False`
        looks without adding to `failed_allocations` (a replay reporting the outcome of a tick)."""
        world = self._world_at(at_s)
        with self._lock:
            gpus = tuple(self._gpu_snapshot(g, world, at_s, record=record) for g in self.scenario.gpus)
        return TelemetrySnapshot(
            backend=self.name,
            state=BackendState.SIMULATED,
            taken_at=at_s,
            gpus=gpus,
            message=(
                f"Simulated GPU: scenario {self.scenario.name} at {round(at_s, 1):g} s (no real GPU is used)"
            ),
            game_signals=tuple(world.signals),
        )

    def probe(self) -> tuple[object, ...] | None:
        """None: every simulated sample is taken in full, so scenarios (and replays) see each sample's
        allocation failures and sensor values exactly when the timeline says."""
        return None

    def close(self) -> None:
        with self._lock:
            self._ours.clear()

    # --- game signals and scenario events ----------------------------------------------------------

    def active_game_signals(self, at: float | None = None) -> tuple[SimulatedGameSignal, ...]:
        world = self._world_at(self._clock() if at is None else at)
        return tuple(world.signals.values())

    def scenario_events(self, until_s: float | None = None) -> tuple[Event, ...]:
        """Game signals and lost GPUs up to `until_s` (default: now), as the engine's events say them."""
        until = self._clock() if until_s is None else until_s
        events: list[Event] = []
        started: dict[str, TimelineEvent] = {}
        for e in self.scenario.timeline[: bisect.bisect_right(self._times, until)]:
            if e.event == "game_signal_start" and e.name is not None:
                started[e.name] = e
                events.append(
                    GameStarted(at=e.at_s, name=e.name, source=e.source or "", pid=e.pid, app_id=e.app_id)
                )
            elif e.event == "game_signal_end" and e.name is not None:
                begin = started.pop(e.name, None)
                source = (begin.source or "") if begin else ""
                pid, app_id = (begin.pid, begin.app_id) if begin else (None, None)
                events.append(GameEnded(at=e.at_s, name=e.name, source=source, pid=pid, app_id=app_id))
            elif e.event == "gpu_lost" and e.gpu is not None:
                gpu = self.scenario.gpu(e.gpu)
                assert gpu is not None  # the parser checked it
                events.append(GpuLost(at=e.at_s, gpu=e.gpu, message=e.message or _lost_message(gpu)))
        return tuple(events)

    def processes(self, at: float | None = None) -> tuple[SimulatedProcess, ...]:
        """The scenario's foreign processes running at `at` (default now), in the order they appeared."""
        world = self._world_at(self._clock() if at is None else at)
        return tuple(
            SimulatedProcess(pid=p.pid, name=p.name, gpu=p.gpu, started_at_s=p.started_at_s)
            for p in sorted(world.processes.values(), key=lambda p: p.order)
        )

    # --- our allocations ---------------------------------------------------------------------------

    def allocate(self, gpu: int, pid: int, name: str, nbytes: int) -> None:
        """Hold `nbytes` more on `gpu` for our process `pid`.

        Raises SimulatedOutOfMemory when they do not fit, GpuUnavailable when the GPU is missing or lost."""
        if nbytes < 0:
            raise ValueError(f"allocate: nbytes must be 0 or more, got {nbytes}")
        at_s = self._clock()
        world = self._world_at(at_s)
        scenario_gpu = self._existing_gpu(gpu, world)
        if pid in world.processes:
            raise ValueError(
                f"allocate: pid {pid} is a foreign process of the scenario ({world.processes[pid].name})"
            )
        with self._lock:
            snapshot = self._gpu_snapshot(scenario_gpu, world, at_s, record=False)
            if nbytes > snapshot.free_bytes:
                raise SimulatedOutOfMemory(
                    gpu=gpu, pid=pid, requested_bytes=nbytes, free_bytes=snapshot.free_bytes
                )
            held = self._ours.setdefault((gpu, pid), _OurAllocation(name=name, nbytes=0))
            held.nbytes += nbytes
        logger.debug("simulated allocate: gpu %d pid %d +%d bytes", gpu, pid, nbytes)

    def free(self, gpu: int, pid: int, nbytes: int | None = None) -> None:
        """Release `nbytes` of what `pid` holds on `gpu`, or all of it (None). Freeing nothing held is a no-op
        for None; asking to free more than is held is a ValueError."""
        with self._lock:
            held = self._ours.get((gpu, pid))
            if nbytes is None or (held is not None and nbytes == held.nbytes):
                self._ours.pop((gpu, pid), None)
                return
            if nbytes < 0 or held is None or nbytes > held.nbytes:
                have = 0 if held is None else held.nbytes
                raise ValueError(f"free: pid {pid} holds {have} bytes on GPU {gpu}, cannot free {nbytes}")
            held.nbytes -= nbytes

    def our_bytes(self, gpu: int, pid: int | None = None) -> int:
        """What we hold on `gpu` (for one pid, or all of ours)."""
        with self._lock:
            return sum(a.nbytes for (g, p), a in self._ours.items() if g == gpu and (pid is None or p == pid))

    def would_fail(self, gpu: int, pid: int, at: float | None = None) -> bool:
        """True when foreign process `pid` wants more VRAM on `gpu` than it can get (at `at`, default now)."""
        at_s = self._clock() if at is None else at
        world = self._world_at(at_s)
        process = world.processes.get(pid)
        gpu_world = world.gpus.get(gpu)
        scenario_gpu = self.scenario.gpu(gpu)
        if (
            process is None
            or process.gpu != gpu
            or gpu_world is None
            or gpu_world.lost
            or scenario_gpu is None
        ):
            return False
        with self._lock:
            granted = self._grant(scenario_gpu, world, at_s)
        wanted, got = granted[pid]
        return got < wanted

    def shortfalls(self, at: float | None = None) -> tuple[FailedAllocation, ...]:
        """The foreign processes that want more VRAM than they can get at `at` (default now): what a
        `failed_allocations` entry would say, without recording anything."""
        at_s = self._clock() if at is None else at
        world = self._world_at(at_s)
        short: list[FailedAllocation] = []
        with self._lock:
            for gpu in self.scenario.gpus:
                if world.gpus[gpu.index].lost:
                    continue
                for pid, (wanted, got) in self._grant(gpu, world, at_s).items():
                    if got < wanted:
                        short.append(FailedAllocation(at_s, gpu.index, pid, wanted, got))
        return tuple(short)

    # --- internals ---------------------------------------------------------------------------------

    def _existing_gpu(self, gpu: int, world: _World) -> ScenarioGpu:
        scenario_gpu = self.scenario.gpu(gpu)
        if scenario_gpu is None:
            raise GpuUnavailable(reason=f"the scenario {self.scenario.name} has no GPU {gpu}", gpu=gpu)
        if world.gpus[gpu].lost:
            raise GpuUnavailable(reason="it fell off the bus (simulated)", gpu=gpu)
        return scenario_gpu

    def _world_at(self, at_s: float) -> _World:
        s = self.scenario
        processes = {
            p.pid: _Process(pid=p.pid, name=p.name, gpu=p.gpu, kind=p.kind, order=i, used_bytes=p.used_bytes)
            for i, p in enumerate(s.processes)
        }
        gpus = {
            g.index: _GpuWorld(temperature_c=g.temperature_c, utilization_percent=g.utilization_percent)
            for g in s.gpus
        }
        signals: dict[str, SimulatedGameSignal] = {}
        order = len(processes)
        for e in s.timeline[: bisect.bisect_right(self._times, at_s)]:
            if e.event == "process_start" and e.pid is not None:
                processes[e.pid] = _Process(
                    pid=e.pid,
                    name=e.name or "",
                    gpu=e.gpu or 0,
                    kind=e.kind or ProcessKind.COMPUTE,
                    order=order,
                    used_bytes=e.used_bytes or 0,
                    started_at_s=e.at_s,
                )
                order += 1
            elif e.event == "process_resize" and e.pid is not None and e.to_bytes is not None:
                process = processes[e.pid]
                start = process.wanted_bytes(e.at_s) if e.from_bytes is None else e.from_bytes
                process.ramp = (e.at_s, start, e.to_bytes, e.duration_s)
            elif e.event == "process_exit" and e.pid is not None:
                processes.pop(e.pid, None)
            elif e.event == "gpu_lost" and e.gpu is not None:
                gpus[e.gpu].lost = True
                gpus[e.gpu].lost_message = e.message
            elif e.event == "gpu_recovered" and e.gpu is not None:
                gpus[e.gpu].lost = False
                gpus[e.gpu].lost_message = None
            elif e.event == "game_signal_start" and e.name is not None:
                signals[e.name] = SimulatedGameSignal(
                    name=e.name,
                    source=e.source or "gamemode",
                    pid=e.pid,
                    app_id=e.app_id,
                    started_at_s=e.at_s,
                )
            elif e.event == "game_signal_end" and e.name is not None:
                signals.pop(e.name, None)
            elif e.event == "temperature" and e.gpu is not None:
                gpus[e.gpu].temperature_c = e.temperature_c
                if e.utilization_percent is not None:
                    gpus[e.gpu].utilization_percent = e.utilization_percent
        return _World(processes=processes, gpus=gpus, signals=signals)

    def _grant(self, gpu: ScenarioGpu, world: _World, at_s: float) -> dict[int, tuple[int, int]]:
        """pid -> (wanted, got) for the foreign processes on `gpu`, earliest first. Hold the lock."""
        left = (
            gpu.total_bytes
            - gpu.reserved_bytes
            - sum(a.nbytes for (g, _), a in self._ours.items() if g == gpu.index)
        )
        granted: dict[int, tuple[int, int]] = {}
        for p in sorted((p for p in world.processes.values() if p.gpu == gpu.index), key=lambda p: p.order):
            wanted = p.wanted_bytes(at_s)
            got = max(0, min(wanted, left))
            left -= got
            granted[p.pid] = (wanted, got)
        return granted

    def _gpu_snapshot(self, gpu: ScenarioGpu, world: _World, at_s: float, *, record: bool) -> GpuSnapshot:
        """Call with the lock held."""
        state = world.gpus[gpu.index]
        if state.lost:
            gone = "GPU is lost"
            return GpuSnapshot(
                index=gpu.index,
                name=gpu.name,
                uuid=gpu.uuid,
                total_bytes=gpu.total_bytes,
                used_bytes=0,
                free_bytes=0,
                reserved_bytes=None,
                temperature_c=None,
                utilization_percent=None,
                state=GpuState.LOST,
                message=state.lost_message or _lost_message(gpu),
                unavailable=(
                    ("reserved_bytes", gone),
                    ("temperature_c", gone),
                    ("utilization_percent", gone),
                ),
            )
        granted = self._grant(gpu, world, at_s)
        processes = [
            GpuProcess(
                pid=pid, name=world.processes[pid].name, used_bytes=got, kind=world.processes[pid].kind
            )
            for pid, (_, got) in granted.items()
        ]
        for (g, pid), ours in sorted(self._ours.items()):
            if g == gpu.index:
                processes.append(
                    GpuProcess(pid=pid, name=ours.name, used_bytes=ours.nbytes, kind=ProcessKind.COMPUTE)
                )
        if record:
            self._record_failures(gpu.index, granted, at_s)
        used = sum(p.used_bytes or 0 for p in processes)
        unavailable = tuple(
            (field, "not given by the scenario")
            for field, value in (
                ("temperature_c", state.temperature_c),
                ("utilization_percent", state.utilization_percent),
            )
            if value is None
        )
        return GpuSnapshot(
            index=gpu.index,
            name=gpu.name,
            uuid=gpu.uuid,
            total_bytes=gpu.total_bytes,
            used_bytes=used,
            free_bytes=gpu.total_bytes - gpu.reserved_bytes - used,
            reserved_bytes=gpu.reserved_bytes,
            temperature_c=state.temperature_c,
            utilization_percent=state.utilization_percent,
            processes=tuple(processes),
            unavailable=unavailable,
        )

    def _record_failures(self, gpu: int, granted: dict[int, tuple[int, int]], at_s: float) -> None:
        """Remember each foreign shortfall once per change (not once per sample). Call with the lock held."""
        for pid, (wanted, got) in granted.items():
            key = (gpu, pid)
            if got >= wanted:
                self._last_failure.pop(key, None)
            elif self._last_failure.get(key) != (wanted, got):
                self._last_failure[key] = (wanted, got)
                self.failed_allocations.append(FailedAllocation(at_s, gpu, pid, wanted, got))
                logger.info(
                    "simulated: pid %d on GPU %d wanted %s, only %s could be given",
                    pid,
                    gpu,
                    format_bytes(wanted),
                    format_bytes(got),
                )
        for key in [k for k in self._last_failure if k[0] == gpu and k[1] not in granted]:
            del self._last_failure[key]


def _monotonic_from_zero() -> Callable[[], float]:
    start = time.monotonic()

    def clock() -> float:
        return time.monotonic() - start

    return clock


def _lost_message(gpu: ScenarioGpu) -> str:
    return (
        f"GPU {gpu.index} ({gpu.name}) fell off the bus (simulated NVML_ERROR_GPU_IS_LOST); "
        "reboot or reset the GPU to use it again"
    )
