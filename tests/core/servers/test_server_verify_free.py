"""Verified eviction on its own: waiting for NVML (here the simulated GPU) to show the memory back, the
residue report, the fallback on free memory when NVML lists other PIDs than ours, and no GPU at all."""

from __future__ import annotations

import pytest

from app.core.gpu.null import NullBackend
from app.core.servers.verify_free import FreeResult, measure, wait_until_freed
from app.core.units import GiB, MiB
from tests.fixtures.servers.world import ServerWorld

RUNNER = 5_100_001


def free_later(world: ServerWorld, at_s: float, nbytes: int | None = None) -> None:
    """Free the runner's memory once the simulated clock reaches `at_s` (checked at every sample)."""

    class Later:
        done = False

        def settle(self) -> None:
            if world.clock() >= at_s and not self.done:
                self.done = True
                world.sim.free(0, RUNNER, nbytes)

        def stop(self) -> None:
            pass

    world.standins.append(Later())  # type: ignore[arg-type]


def test_waits_until_the_memory_is_back_and_says_how_much(world: ServerWorld) -> None:
    world.sim.allocate(0, RUNNER, "/usr/bin/llama-server", 6 * GiB)
    before = measure(world.backend.sample(), {RUNNER})
    free_later(world, 0.8)
    result = wait_until_freed(
        world.backend, {RUNNER}, before, expected_bytes=6 * GiB, clock=world.clock, sleep=world.sleep
    )
    assert result.complete and result.freed_bytes == 6 * GiB and result.residue_bytes == 0
    assert result.waited_s == pytest.approx(0.8, abs=0.11)
    assert result.describe() == "freed 6.0 GiB"


def test_a_residue_is_reported_with_the_process_that_keeps_it(world: ServerWorld) -> None:
    world.sim.allocate(0, RUNNER, "/usr/bin/llama-server", 6 * GiB)
    before = measure(world.backend.sample(), {RUNNER})
    free_later(world, 0.5, 6 * GiB - 300 * MiB)
    result = wait_until_freed(
        world.backend,
        {RUNNER},
        before,
        expected_bytes=6 * GiB,
        clock=world.clock,
        sleep=world.sleep,
        timeout_s=2.0,
    )
    assert not result.complete
    assert result.waited_s == pytest.approx(2.0, abs=0.11)
    assert result.residue_bytes == 300 * MiB
    assert result.describe() == f"freed 5.7 GiB, 300.0 MiB still held by llama-server (pid {RUNNER})"


def test_when_nvml_lists_other_pids_free_memory_tells(world: ServerWorld) -> None:
    world.sim.allocate(0, RUNNER, "llama-server", 4 * GiB)
    not_visible = {RUNNER + 1}  # the PID our process table knows is not the one NVML reports
    before = measure(world.backend.sample(), not_visible)
    assert before is not None and not before.visible
    free_later(world, 1.0)
    result = wait_until_freed(
        world.backend,
        not_visible,
        before,
        expected_bytes=4 * GiB,
        clock=world.clock,
        sleep=world.sleep,
        gpus={0},
    )
    assert result.complete and result.freed_bytes == 4 * GiB
    assert result.waited_s == pytest.approx(1.0, abs=0.11)


def test_without_gpu_telemetry_nothing_is_claimed() -> None:
    backend = NullBackend(message="no NVIDIA driver")
    before = measure(backend.sample(), {RUNNER})
    assert before is None
    result = wait_until_freed(
        backend, {RUNNER}, before, expected_bytes=GiB, clock=lambda: 0.0, sleep=lambda s: None
    )
    assert result == FreeResult(None, None, None, 0.0, verified=False)
    assert result.describe() == "unloaded; VRAM could not be measured here"
