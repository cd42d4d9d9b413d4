"""ResidencyManager through the real pipe protocol (serve loop in a thread, SimulatedDevice accounted on a
simulated GPU): seal, verify, tamper, evict, reload, refusals, failures part-way, cancelled loads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from residency_world import CHUNK, SEGMENT, World, expected_digest, make_world, write_model

from app.core import events as ev
from app.core.errors import (
    CudaAllocationFailed,
    InsufficientVram,
    InvalidInput,
    ModelFileError,
    SealVerificationFailed,
)
from app.core.holders import ModelState
from app.core.residency.seal import Device
from app.core.residency.simulated_device import SimulatedDevice
from app.core.units import MiB


def state(world: World, model: str = "m") -> ModelState:
    return next(s.state for s in world.manager.models() if s.name == model)


def test_load_seals_the_file_and_accounts_its_bytes_on_the_gpu(tmp_path: Path) -> None:
    data = write_model(tmp_path / "m.bin", 3 * MiB + 5)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    progress: list[tuple[int, int]] = []
    sealed = world.manager.load_blocking("m", progress=lambda d, t: progress.append((d, t)), timeout_s=10)
    assert sealed is not None
    assert sealed.digest == expected_digest(data) and sealed.bytes == len(data) and not sealed.file_changed
    assert sealed.bytes_per_s > 0 and sealed.seconds > 0
    status = next(s for s in world.manager.models() if s.name == "m")
    assert (status.state, status.digest, status.size_bytes, status.holder) == (
        ModelState.RESIDENT,
        sealed.digest,
        len(data),
        "builtin",
    )
    # the simulated GPU shows the bytes under the host's pid, and the ledger counts them until a sample does
    (pid,) = world.manager.pids()
    assert world.backend.our_bytes(0, pid) == len(data)
    assert world.ledgers[0].outstanding_bytes() == len(data)
    world.observe()
    assert world.ledgers[0].outstanding_bytes() == 0
    # progress: monotone, ending at the total; the load's events in order, and in the audit log
    done = [d for d, _ in progress]
    assert done == sorted(done) and done[-1] == len(data)
    assert world.kinds()[-2:] == ["VramAllocated", "VramSealed"]
    audit = [e["type"] for e in world.audit.read()]
    assert audit == ["VramAllocated", "VramSealed"]  # progress is not audited
    assert world.manager.load_blocking("m") is None  # already resident: nothing to do


def test_verify_passes_then_names_the_tampered_chunk(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 2 * MiB)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    world.manager.load_blocking("m", timeout_s=10)
    verified = world.manager.verify_now("m")
    assert verified.digest == world.manager.manifest("m").digest  # type: ignore[union-attr]
    world.manager.tamper_for_tests("m", offset=17 * CHUNK + 3)
    with pytest.raises(SealVerificationFailed) as info:
        world.manager.verify_now("m")
    assert info.value.damaged_chunks == [17] and "chunk 17" in info.value.message
    assert not info.value.retriable
    critical = [e for e in world.audit.read() if e["type"] == "SealVerificationFailed"]
    assert (
        len(critical) == 1 and critical[0]["severity"] == "critical" and critical[0]["damaged_chunks"] == [17]
    )
    assert [type(e).__name__ for e in world.manager.poll()][-2:] == ["SealVerified", "SealVerificationFailed"]


def test_evict_frees_everything_ends_the_host_and_confirms_zero_residue(tmp_path: Path) -> None:
    write_model(tmp_path / "a.bin", 1 * MiB)
    write_model(tmp_path / "b.bin", 2 * MiB, seed=2)
    world = make_world(tmp_path, [("a", tmp_path / "a.bin"), ("b", tmp_path / "b.bin")])
    world.manager.load_blocking("a", timeout_s=10)
    world.manager.load_blocking("b", timeout_s=10)
    assert len(world.manager.pids()) == 1  # one host per GPU holds both
    assert world.ours() == 3 * MiB
    # evicting one model keeps the host (it holds the other); residue cannot be told apart: None
    (first,) = world.manager.evict(["a"], "pressure")
    assert isinstance(first, ev.VramDeallocated)
    assert (first.model, first.bytes, first.reason, first.residue_bytes) == ("a", 1 * MiB, "pressure", None)
    assert world.ours() == 2 * MiB and len(world.manager.pids()) == 1
    # evicting the last one ends the host: NVML (the simulator) shows nothing of ours
    started = time.monotonic()
    (last,) = world.manager.evict(["b"], "game")
    assert time.monotonic() - started < 2.0
    assert isinstance(last, ev.VramDeallocated) and last.residue_bytes == 0
    assert world.ours() == 0 and world.manager.pids() == set()
    assert [state(world, m) for m in ("a", "b")] == [ModelState.EVICTED, ModelState.EVICTED]
    assert world.manager.evict(["a", "b"], "game") == []  # nothing left to free


def test_reload_says_whether_the_file_changed_even_in_a_new_manager(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 1 * MiB)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    world.manager.load_blocking("m", timeout_s=10)
    world.manager.reload("m")
    unchanged = world.manager.load_blocking("m", timeout_s=10)
    assert unchanged is not None and unchanged.file_changed is False
    world.manager.close()
    data = write_model(tmp_path / "m.bin", 1 * MiB, seed=99)
    # a later run: the manifest persisted in the state dir is the reference
    later = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    changed = later.manager.load_blocking("m", timeout_s=10)
    assert changed is not None and changed.file_changed is True and changed.digest == expected_digest(data)
    assert "VramDeallocated" in world.kinds() and later.ours() == 1 * MiB
    later.manager.close()
    assert later.ours() == 0


def test_insufficient_vram_is_refused_before_anything_starts(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 3 * MiB + 1)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")], total="4 MiB")  # 4 MiB - 1 MiB headroom
    with pytest.raises(InsufficientVram) as info:
        world.manager.start_load("m")
    assert (
        info.value.retriable
        and info.value.needed_bytes == 3 * MiB + 1
        and info.value.available_bytes == 3 * MiB
    )
    assert world.manager.pids() == set() and world.ours() == 0
    assert world.kinds() == ["VramAllocationFailed", "LoadRefused"]
    status = next(s for s in world.manager.models() if s.name == "m")
    assert status.state == ModelState.WAITING and "Not enough free VRAM" in (
        status.last_error or ""
    )  # retried


@pytest.mark.parametrize("kind", ["missing", "directory", "empty"])
def test_bad_files_are_refused_without_a_host_or_a_reservation(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.bin"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    world = make_world(tmp_path, [("m", path)])
    with pytest.raises(ModelFileError) as info:
        world.manager.load_blocking("m", timeout_s=10)
    assert str(path) in info.value.message
    assert world.manager.pids() == set() and world.ledgers[0].outstanding_bytes() == 0
    assert world.kinds() == ["VramAllocationFailed"]


def test_a_file_truncated_in_the_host_comes_back_as_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    write_model(path, 2 * MiB)

    class TruncatingDevice:  # the real SimulatedDevice; the file shrinks when the second segment is taken
        def __init__(self, inner: SimulatedDevice, world: World) -> None:
            self.inner = inner
            self.gpu = inner.gpu
            self.pid = inner.pid
            self.allocations = 0

        def allocate(self, nbytes: int) -> int:
            self.allocations += 1
            if self.allocations == 2:
                os.truncate(path, SEGMENT + 10)
            return self.inner.allocate(nbytes)

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

    world = make_world(tmp_path, [("m", path)], wrap_device=lambda d, w: TruncatingDevice(d, w))  # type: ignore[arg-type,return-value]
    with pytest.raises(ModelFileError, match="ended early"):
        world.manager.load_blocking("m", timeout_s=10)
    assert world.ours() == 0 and world.ledgers[0].outstanding_bytes() == 0
    assert world.manager.pids() == set()  # the host held nothing else: it ended
    assert world.kinds()[-1] == "VramAllocationFailed"


def test_out_of_memory_mid_seal_frees_everything_and_is_retriable(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 4 * SEGMENT)
    timeline = '[[timeline]]\nat = 50.0\nevent = "process_start"\npid = 900\nname = "game"\nused = "64 MiB"\n'

    class GameStartsMidSeal:
        def __init__(self, inner: SimulatedDevice, world: World) -> None:
            self.inner, self.world, self.gpu, self.pid = inner, world, inner.gpu, inner.pid

        def allocate(self, nbytes: int) -> int:
            block = self.inner.allocate(nbytes)
            self.world.clock.set(60.0)  # after our first segment, the game takes everything left
            return block

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

    world = make_world(
        tmp_path, [("m", tmp_path / "m.bin")], timeline=timeline, wrap_device=GameStartsMidSeal
    )  # type: ignore[arg-type]
    before = world.ours()
    with pytest.raises(CudaAllocationFailed) as info:
        world.manager.load_blocking("m", timeout_s=10)
    assert info.value.retriable and info.value.retry_after_s
    assert world.ours() == before == 0
    assert world.ledgers[0].outstanding_bytes() == 0 and world.manager.pids() == set()
    failed = [e for e in world.events if isinstance(e, ev.VramAllocationFailed)]
    assert len(failed) == 1 and failed[0].reason == "cuda_allocation_failed"
    assert world.ledgers[0].allocation_failures_total.get("cuda_allocation_failed") == 1


def test_evict_while_loading_cancels_the_seal_and_frees_it(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 4 * MiB)
    gate = threading.Event()

    class SlowDevice:
        def __init__(self, inner: SimulatedDevice, world: World) -> None:
            self.inner, self.gpu, self.pid = inner, inner.gpu, inner.pid

        def copy_to_device(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
            gate.set()
            time.sleep(0.002)
            self.inner.copy_to_device(block, offset, buffer, nbytes)

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

    world = make_world(tmp_path, [("m", tmp_path / "m.bin")], wrap_device=SlowDevice)  # type: ignore[arg-type]
    world.manager.start_load("m")
    assert gate.wait(5)
    assert state(world) == ModelState.LOADING
    events = world.manager.evict(["m"], "game")
    assert [type(e).__name__ for e in events] == ["VramDeallocated"]
    assert state(world) == ModelState.EVICTED
    assert world.ours() == 0 and world.manager.pids() == set() and world.ledgers[0].outstanding_bytes() == 0
    time.sleep(0.05)
    assert not [e for e in world.manager.poll() if isinstance(e, ev.VramSealed)]


def test_unknown_models_and_verify_of_a_model_not_loaded_are_invalid_input(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 1 * MiB)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    with pytest.raises(InvalidInput, match=r"unknown model 'x'.*known: m"):
        world.manager.start_load("x")
    with pytest.raises(InvalidInput, match="not resident"):
        world.manager.verify_now("m")


def test_unload_is_not_restored_and_close_frees_all(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 1 * MiB)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    world.manager.load_blocking("m", timeout_s=10)
    (event,) = world.manager.unload("m")
    assert isinstance(event, ev.VramDeallocated) and event.reason == "user" and event.residue_bytes == 0
    assert state(world) == ModelState.UNLOADED
    world.manager.load_blocking("m", timeout_s=10)
    world.manager.close()
    assert world.ours() == 0 and world.manager.pids() == set()


def test_devices_are_only_reached_through_the_device_protocol(tmp_path: Path) -> None:
    # a wrapper that implements only part of Device must still be enough for the manager's whole cycle
    write_model(tmp_path / "m.bin", 1 * MiB)

    def identity(inner: SimulatedDevice, world: World) -> Device:
        return inner

    world = make_world(tmp_path, [("m", tmp_path / "m.bin")], wrap_device=identity)
    world.manager.load_blocking("m", timeout_s=10)
    assert world.devices and world.devices[0].allocated_bytes == 1 * MiB
