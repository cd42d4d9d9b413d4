"""The freezing holder on the engine: a game freezes a configured app (its VRAM leaves the GPU), the cooldown
restores it; and each safety rule: never for pressure, never a restore the ledger cannot grant, host RAM
checked, graphics refused, a driver refusal unlocks the whole group, an exit while frozen is forgotten.

The driver here is a protocol-faithful fake in Python (the checkpoint state machine of the driver API, moving
the process's memory in the simulated GPU); tests/core/freeze/ also drives the real ctypes layer against the
stand-in libcuda.so.1."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.core import events as ev
from app.core.config import AppRule, Settings
from app.core.engine.steward import Steward
from app.core.freeze.api import (
    CUDA_ERROR_NOT_SUPPORTED,
    CUDA_ERROR_OPERATING_SYSTEM,
    CUDA_ERROR_OUT_OF_MEMORY,
    CheckpointError,
    FreezingUnavailable,
    ProcessState,
)
from app.core.freeze.holder import FreezeHolder, FreezeRule
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.policy.signals import GameSignal, ScriptedSignals
from app.core.residency.ledger import Ledgers
from app.core.units import GiB

CARD = """
description = "a 24 GiB card with a desktop"
duration_s = 3600

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 4090"
uuid = "GPU-00000000-0000-4000-8000-000000004090"
total = "24 GiB"
reserved = "256 MiB"

[[processes]]
pid = 1201
name = "Xorg"
used = "300 MiB"
kind = "graphics"
"""

GAME = GameSignal(name="Cyberpunk 2077", source="gamemode", pid=4242, started_at=0.0)


class FakeDriver:
    """The checkpoint state machine per pid, as the driver API documents it; a checkpoint moves the
    process's VRAM out of the simulated GPU, a restore puts it back (or runs out of memory)."""

    def __init__(self, sim: SimulatedBackend, sizes: dict[int, int]) -> None:
        self.sim = sim
        self.sizes = sizes
        self.states: dict[int, ProcessState] = {}
        self.calls: list[tuple[str, int]] = []
        self.refuse_checkpoint: set[int] = set()
        self.stuck: set[int] = set()

    def state(self, pid: int) -> ProcessState:
        return self.states.get(pid, ProcessState.RUNNING)

    def _step(self, step: str, pid: int, want: ProcessState, then: ProcessState) -> None:
        self.calls.append((step, pid))
        if self.state(pid) != want:
            raise CheckpointError(step, pid, 1, "CUDA_ERROR_INVALID_VALUE")
        self.states[pid] = then

    def lock(self, pid: int, timeout_ms: int) -> None:
        self._step("lock", pid, ProcessState.RUNNING, ProcessState.LOCKED)

    def checkpoint(self, pid: int) -> None:
        if pid in self.refuse_checkpoint:
            self.calls.append(("checkpoint", pid))
            raise CheckpointError("checkpoint", pid, CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED")
        self._step("checkpoint", pid, ProcessState.LOCKED, ProcessState.CHECKPOINTED)
        self.sim.free(0, pid)

    def restore(self, pid: int) -> None:
        self.calls.append(("restore", pid))
        if pid in self.stuck:
            raise CheckpointError("restore", pid, CUDA_ERROR_OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM")
        try:
            self.sim.allocate(0, pid, "python3", self.sizes[pid])
        except Exception:
            self.stuck.add(pid)
            raise CheckpointError(
                "restore", pid, CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY"
            ) from None
        self.states[pid] = ProcessState.LOCKED

    def unlock(self, pid: int) -> None:
        self._step("unlock", pid, ProcessState.LOCKED, ProcessState.RUNNING)


def at_once(fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(fn())
    return future


class World:
    def __init__(self, *, sizes: tuple[int, ...] = (8 * GiB,), host_room: int = 64 * GiB) -> None:
        self.clock = ManualClock()
        self.sim = SimulatedBackend(parse_scenario(CARD, name="freeze"), clock=self.clock)
        self.procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in sizes]
        self.pids = [p.pid for p in self.procs]
        for pid, size in zip(self.pids, sizes, strict=True):
            self.sim.allocate(0, pid, "python3", size)
        self.driver = FakeDriver(self.sim, dict(zip(self.pids, sizes, strict=True)))
        # "render" is the user's own app, never a trigger: it only takes room
        settings = Settings(resume_cooldown_secs=30.0, app_rules=(AppRule(match="render", action="ignore"),))
        self.ledgers = Ledgers(settings.headroom_bytes, clock=self.clock)
        self.unavailable: str | None = None
        self.holder = FreezeHolder(
            [FreezeRule("ComfyUI", "ComfyUI/main.py")],
            backend=self.sim,
            ledgers=self.ledgers,
            driver=self.open_driver,
            clock=self.clock,
            find=lambda rule: list(self.pids),
            host_room_bytes=lambda: host_room,
            run=at_once,
            refresh_s=0.5,
        )
        self.signals = ScriptedSignals()
        self.steward = Steward(
            settings, self.sim, [self.holder], signals=self.signals, ledgers=self.ledgers, clock=self.clock
        )
        self.events: list[ev.Event] = []
        self.steward.subscribe(self.events.append)

    def open_driver(self) -> FakeDriver:
        if self.unavailable:
            raise FreezingUnavailable(self.unavailable)
        return self.driver

    def run(self, seconds: float) -> Any:
        end = self.clock() + seconds
        snapshot = self.steward.tick()
        while self.clock() < end:
            self.clock.advance(0.1)
            self.holder._listing and self.holder._listing.result(timeout=5)  # the /proc walk, joined
            snapshot = self.steward.tick()
        return snapshot

    def app(self) -> Any:
        (status,) = [m for m in self.steward.snapshot.models if m.name == "ComfyUI"]  # type: ignore[union-attr]
        return status

    def close(self) -> None:
        self.steward.shutdown()
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def test_a_game_freezes_the_app_and_the_cooldown_restores_it(world: World) -> None:
    world.run(2)
    assert world.app().state == "resident" and world.app().size_bytes == 8 * GiB
    (pid,) = world.pids
    world.signals.games = (GAME,)
    world.run(1)
    assert world.app().state == "frozen"
    assert world.sim.our_bytes(0, pid) == 0, "its VRAM left the GPU"
    frozen = [e for e in world.events if isinstance(e, ev.VramDeallocated) and e.reason == "frozen"]
    assert frozen and frozen[0].bytes == 8 * GiB
    evicted = [e for e in world.events if isinstance(e, ev.ModelsEvicted)]
    assert evicted[0].models == ("ComfyUI",) and evicted[0].freed_bytes == 8 * GiB
    world.signals.games = ()
    world.run(40)  # the cooldown (30 s), then the restore
    assert world.app().state == "resident"
    assert world.sim.our_bytes(0, pid) == 8 * GiB
    assert world.driver.calls == [("lock", pid), ("checkpoint", pid), ("restore", pid), ("unlock", pid)]
    assert world.ledgers.for_gpu(0).reservations() == (), "the restore's reservation is released"


def test_pressure_never_freezes_an_app(world: World) -> None:
    world.run(2)
    world.sim.allocate(0, 9000, "blender", 10 * GiB)  # 10 GiB of foreign growth: pressure
    world.run(3)
    assert world.app().state == "resident"
    assert world.driver.calls == []


def test_no_restore_without_room_granted_first_and_the_user_is_told(world: World) -> None:
    world.run(2)
    world.signals.games = (GAME,)
    world.run(1)
    # the user's render took room meanwhile: 8.26 GiB is free above the headroom, enough for the policy's
    # "the model fits" (8 GiB) but not for the footprint plus the restore margin (8.5 GiB)
    world.sim.allocate(0, 9000, "render", int(12.8 * GiB))
    world.signals.games = ()
    world.run(40)
    assert world.app().state == "frozen", "a restore that could run out of VRAM leaves a process stuck"
    assert ("restore", world.pids[0]) not in world.driver.calls
    assert "stays frozen" in (world.app().last_error or "")
    assert any(isinstance(e, ev.LoadRefused) and e.model == "ComfyUI" for e in world.events)
    world.sim.free(0, 9000)  # the room comes back: restored after the cooldown
    world.run(40)
    assert world.app().state == "resident"


def test_host_ram_is_checked_before_a_freeze() -> None:
    world = World(host_room=4 * GiB)
    try:
        world.run(2)
        world.signals.games = (GAME,)
        world.run(1)
        assert world.app().state == "resident" and world.driver.calls == []
        assert "host RAM" in (world.app().last_error or "")
    finally:
        world.close()


def test_a_driver_refusal_unlocks_the_whole_group_at_once() -> None:
    world = World(sizes=(6 * GiB, 2 * GiB))
    try:
        world.run(2)
        first, second = world.pids
        world.driver.refuse_checkpoint.add(second)  # e.g. managed memory in one worker
        world.signals.games = (GAME,)
        world.run(1)
        assert world.app().state == "resident"
        assert "managed memory" in (world.app().last_error or "")
        assert world.driver.states == {first: ProcessState.RUNNING, second: ProcessState.RUNNING}
        assert world.sim.our_bytes(0, first) == 6 * GiB, "all or nothing: the first one is restored"
        world.run(5)
        assert world.driver.calls.count(("lock", first)) == 1, "not tried again while the game runs"
    finally:
        world.close()


def test_an_app_that_exits_while_frozen_is_forgotten(world: World) -> None:
    world.run(2)
    world.signals.games = (GAME,)
    world.run(1)
    world.procs[0].kill()
    world.procs[0].wait()
    world.run(2)
    assert not [m for m in world.steward.snapshot.models if m.name == "ComfyUI"]  # type: ignore[union-attr]
    assert world.holder.pids() == set()


def test_without_the_checkpoint_api_nothing_is_frozen_and_the_reason_is_given(world: World) -> None:
    world.unavailable = "freezing unavailable (driver r570 or later needed)"
    world.run(2)
    world.signals.games = (GAME,)
    world.run(1)
    assert world.app().state == "resident"
    assert "r570" in (world.app().last_error or "")


def test_the_users_freeze_holds_until_the_user_thaws(world: World) -> None:
    """`vram-steward freeze ComfyUI` (the engine's unload of the app) and `thaw` (its load), through the
    engine's door: frozen with no game at all, kept frozen past any cooldown, restored on request."""
    from app.core.policy.contention import Command

    world.run(2)
    (pid,) = world.pids
    frozen = world.steward.submit(Command(kind="unload", model="ComfyUI"))
    world.run(1)
    assert frozen.result(timeout=1).model("ComfyUI").state == "frozen"  # type: ignore[union-attr]
    assert world.app().held_by_user and world.sim.our_bytes(0, pid) == 0
    world.run(90)  # three cooldowns: the policy never restores what the user froze
    assert world.app().state == "frozen"
    thawed = world.steward.submit(Command(kind="load", model="ComfyUI"))
    world.run(1)
    thawed.result(timeout=1)
    assert world.app().state == "resident" and not world.app().held_by_user
    assert world.sim.our_bytes(0, pid) == 8 * GiB
