"""SimulatedBackend: our allocations, foreign shortfalls (failed_allocations), ramps, clocks, threads."""

from __future__ import annotations

import threading
import time

import pytest

from app.core.errors import GpuUnavailable
from app.core.gpu import GpuBackend
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import (
    FailedAllocation,
    ManualClock,
    SimulatedBackend,
    SimulatedOutOfMemory,
)
from app.core.gpu.snapshot import ProcessKind
from app.core.units import GiB, MiB

OUR_PID = 90001
GAME = 4242
GAME_LAUNCH_FREE = 11432 * MiB  # 12 GiB - 256 MiB reserved - 600 MiB desktop


def game_launch(t: float = 0.0) -> tuple[SimulatedBackend, ManualClock]:
    clock = ManualClock(t)
    return SimulatedBackend.from_file("game-launch", clock=clock), clock


def test_it_is_a_gpu_backend() -> None:
    backend, _ = game_launch()
    assert isinstance(backend, GpuBackend)
    assert backend.name == "simulated" and backend.sample().backend == "simulated"


def test_default_clock_starts_at_zero_and_runs() -> None:
    backend = SimulatedBackend.from_file("desktop-idle")
    first = backend.sample().taken_at
    assert 0.0 <= first < 5.0
    time.sleep(0.01)
    assert backend.sample().taken_at > first


def test_manual_clock_drives_samples() -> None:
    backend, clock = game_launch(21.0)
    assert backend.sample().taken_at == 21.0 and backend.sample().gpus[0].process(GAME) is None
    clock.advance(5.0)
    assert backend.now() == 26.0
    game = backend.sample().gpus[0].process(GAME)
    assert game is not None and game.used_bytes == 5270 * MiB


def test_our_allocation_appears_as_a_compute_process_and_counts() -> None:
    backend, _ = game_launch()
    backend.allocate(0, OUR_PID, "vram-steward-host", 8 * GiB)
    gpu = backend.sample().gpus[0]
    ours = gpu.process(OUR_PID)
    assert ours is not None
    assert (ours.name, ours.used_bytes, ours.kind) == ("vram-steward-host", 8 * GiB, ProcessKind.COMPUTE)
    assert gpu.used_bytes == 600 * MiB + 8 * GiB
    assert gpu.free_bytes == GAME_LAUNCH_FREE - 8 * GiB
    backend.allocate(0, OUR_PID, "vram-steward-host", 1 * GiB)
    assert backend.our_bytes(0) == backend.our_bytes(0, OUR_PID) == 9 * GiB
    backend.free(0, OUR_PID, 2 * GiB)
    assert backend.our_bytes(0, OUR_PID) == 7 * GiB
    assert backend.sample().gpus[0].free_bytes == GAME_LAUNCH_FREE - 7 * GiB
    backend.free(0, OUR_PID)
    assert backend.our_bytes(0) == 0 and backend.sample().gpus[0].process(OUR_PID) is None
    backend.free(0, OUR_PID)  # nothing held, None: a no-op


def test_allocation_that_does_not_fit_raises_and_changes_nothing() -> None:
    backend, _ = game_launch()
    backend.allocate(0, OUR_PID, "host", GAME_LAUNCH_FREE)  # exactly all that is free
    assert backend.sample().gpus[0].free_bytes == 0
    with pytest.raises(SimulatedOutOfMemory) as info:
        backend.allocate(0, OUR_PID + 1, "host", 1)
    assert isinstance(info.value, MemoryError)
    assert (info.value.gpu, info.value.requested_bytes, info.value.free_bytes) == (0, 1, 0)
    assert "Out of memory on simulated GPU 0" in str(info.value)
    assert backend.our_bytes(0) == GAME_LAUNCH_FREE


def test_allocation_sees_foreign_use_at_the_clock_time() -> None:
    backend, clock = game_launch(30.0)  # the game holds 10 GiB: 1192 MiB free
    with pytest.raises(SimulatedOutOfMemory) as info:
        backend.allocate(0, OUR_PID, "host", 2 * GiB)
    assert info.value.free_bytes == 1192 * MiB
    clock.set(120.0)  # the game exited
    backend.allocate(0, OUR_PID, "host", 2 * GiB)
    assert backend.our_bytes(0) == 2 * GiB


def test_bad_allocate_and_free_calls() -> None:
    backend, _ = game_launch()
    with pytest.raises(GpuUnavailable, match="no GPU 3"):
        backend.allocate(3, OUR_PID, "host", 1)
    with pytest.raises(ValueError, match="foreign process"):
        backend.allocate(0, 2310, "host", 1)  # firefox's pid
    with pytest.raises(ValueError, match="0 or more"):
        backend.allocate(0, OUR_PID, "host", -1)
    backend.allocate(0, OUR_PID, "host", 100)
    with pytest.raises(ValueError, match="holds 100 bytes"):
        backend.free(0, OUR_PID, 101)
    with pytest.raises(ValueError, match="holds 0 bytes"):
        backend.free(0, OUR_PID + 5, 1)
    assert backend.our_bytes(0) == 100
    backend.close()
    assert backend.our_bytes(0) == 0


def test_allocate_on_a_lost_gpu_is_gpu_unavailable() -> None:
    backend = SimulatedBackend.from_file("gpu-lost", clock=ManualClock(10.0))
    backend.allocate(1, OUR_PID, "host", 1 * GiB)
    backend.set_clock(ManualClock(15.0))
    with pytest.raises(GpuUnavailable, match="GPU 1 is unavailable"):
        backend.allocate(1, OUR_PID, "host", 1)
    backend.free(1, OUR_PID)  # freeing still works
    assert backend.our_bytes(1) == 0


def test_game_shortfall_is_recorded_when_our_model_stays() -> None:
    backend, clock = game_launch(20.0)
    backend.allocate(0, OUR_PID, "host", 8 * GiB)  # 3240 MiB left for the game
    while clock() <= 30.0:
        backend.sample()
        clock.advance(0.5)
    assert backend.failed_allocations, "the game wanted 10 GiB with 8 GiB of ours resident"
    first = backend.failed_allocations[0]
    assert isinstance(first, FailedAllocation)
    at, gpu, pid, wanted, free = first  # a plain tuple too
    # ramp 300 -> 10240 MiB over 22..30 s passes 3240 MiB at 24.37 s: the 24.5 s sample sees it first
    assert (at, gpu, pid, free) == (24.5, 0, GAME, 3240 * MiB)
    assert wanted == round(300 * MiB + (10240 - 300) * MiB * 2.5 / 8)
    assert backend.failed_allocations[-1].wanted_bytes == 10 * GiB
    game = backend.sample().gpus[0].process(GAME)
    assert game is not None and game.used_bytes == 3240 * MiB  # clamped to what was left
    assert backend.sample().gpus[0].free_bytes == 0
    assert backend.would_fail(0, GAME)
    assert not backend.would_fail(0, 2310)  # firefox came first and has its 300 MiB
    count = len(backend.failed_allocations)
    backend.sample()
    backend.sample()
    assert len(backend.failed_allocations) == count  # recorded once per change, not per sample


def test_no_shortfall_when_we_free_before_the_game_allocates() -> None:
    backend, clock = game_launch(0.0)
    backend.allocate(0, OUR_PID, "host", 8 * GiB)
    while clock() <= 60.0:
        if backend.active_game_signals():
            backend.free(0, OUR_PID)  # what the policy does on the GameMode signal at 20 s
        backend.sample()
        clock.advance(0.1)
    assert backend.failed_allocations == []
    assert not backend.would_fail(0, GAME)
    game = backend.sample().gpus[0].process(GAME)
    assert game is not None and game.used_bytes == 10 * GiB


def test_would_fail_looks_ahead_without_recording() -> None:
    backend, _ = game_launch(0.0)
    backend.allocate(0, OUR_PID, "host", 8 * GiB)
    assert not backend.would_fail(0, GAME)  # not running yet
    assert not backend.would_fail(0, GAME, at=24.0)  # 2785 MiB still fits
    assert backend.would_fail(0, GAME, at=25.0)
    assert not backend.would_fail(1, GAME, at=25.0)  # no GPU 1
    assert backend.failed_allocations == []


def test_foreign_processes_are_served_in_order_of_appearance() -> None:
    text = """
[[gpus]]
index = 0
name = "Small"
total = "4 GiB"
[[processes]]
pid = 10
name = "early"
used = "3 GiB"
[[timeline]]
at = 1
event = "process_start"
pid = 20
name = "late"
used = "2 GiB"
"""
    backend = SimulatedBackend(parse_scenario(text), clock=ManualClock(1.0))
    gpu = backend.sample().gpus[0]
    assert {p.pid: p.used_bytes for p in gpu.processes} == {10: 3 * GiB, 20: 1 * GiB}
    assert backend.failed_allocations == [FailedAllocation(1.0, 0, 20, 2 * GiB, 1 * GiB)]


def test_ramps_from_an_explicit_start_and_from_mid_ramp() -> None:
    text = """
[[gpus]]
index = 0
name = "G"
total = "24 GiB"
[[processes]]
pid = 10
name = "p"
used = "1 GiB"
[[timeline]]
at = 10
event = "process_resize"
pid = 10
from = "2 GiB"
to = "10 GiB"
duration_s = 8
[[timeline]]
at = 14
event = "process_resize"
pid = 10
to = "0 B"
duration_s = 6
[[timeline]]
at = 30
event = "gpu_lost"
gpu = 0
[[timeline]]
at = 40
event = "gpu_recovered"
gpu = 0
"""
    backend = SimulatedBackend(parse_scenario(text), clock=ManualClock())

    def used(t: float) -> int | None:
        process = backend.sample_at(t).gpus[0].process(10)
        return None if process is None else process.used_bytes

    assert used(9.9) == 1 * GiB
    assert used(10) == 2 * GiB  # jumps to `from`
    assert used(12) == 4 * GiB
    assert used(14) == 6 * GiB  # the second ramp starts where the first had got to
    assert used(17) == 3 * GiB
    assert used(20) == used(29) == 0
    assert used(30) is None and backend.sample_at(30).gpus[0].state == "lost"
    assert backend.sample_at(40).gpus[0].state == "ok" and used(40) == 0
    assert backend.sample_at(40).gpus[0].message is None


def test_repeat_expands_entries() -> None:
    text = """
[[gpus]]
index = 0
name = "G"
total = "8 GiB"
[[timeline]]
at = 2
event = "temperature"
gpu = 0
temperature = 50
repeat = { every_s = 0.5, count = 3 }
"""
    scenario = parse_scenario(text)
    assert [e.at_s for e in scenario.timeline] == [2.0, 2.5, 3.0]
    assert scenario.timeline[2].entry == "timeline[0] (repeat 2)"


def test_concurrent_allocations_never_overcommit() -> None:
    text = '[[gpus]]\nindex = 0\nname = "G"\ntotal = "500 MiB"\n'
    backend = SimulatedBackend(parse_scenario(text), clock=ManualClock())
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker(pid: int) -> None:
        for _ in range(100):
            try:
                backend.allocate(0, pid, "host", 1 * MiB)
                outcome = granted
            except SimulatedOutOfMemory:
                outcome = refused
            with lock:
                outcome.append(pid)

    threads = [threading.Thread(target=worker, args=(OUR_PID + i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 500 and len(refused) == 300
    assert backend.our_bytes(0) == 500 * MiB
    assert backend.sample().gpus[0].free_bytes == 0
