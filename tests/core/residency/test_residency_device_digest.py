"""The device-digest path of seal and verify (the one the CUDA kernel takes), run on a SimulatedDevice that
hashes its own blocks: same digests as hashlib, damaged chunks named, and failures part-way still free all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from residency_world import (
    CHUNK,
    SEGMENT,
    STAGING,
    expected_chunks,
    expected_digest,
    make_world,
    scenario_text,
    write_model,
)

from app.core.errors import CudaAllocationFailed, ModelFileError, SealVerificationFailed
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.residency.seal import SealOptions, seal_file, verify_resident
from app.core.residency.simulated_device import SimulatedDevice
from app.core.units import MiB

OPTIONS = SealOptions(chunk_size_bytes=CHUNK, staging_bytes=STAGING, segment_bytes=SEGMENT, reader_threads=2)


class CountingDevice(SimulatedDevice):
    """Counts device-side digests, to prove the CPU did not hash."""

    started = 0

    def start_digest(self, block: int, nbytes: int, chunk_size_bytes: int) -> None:
        self.started += 1
        super().start_digest(block, nbytes, chunk_size_bytes)


def test_device_digests_equal_hashlib_and_need_one_start_per_segment(tmp_path: Path) -> None:
    backend = SimulatedBackend(parse_scenario(scenario_text()), clock=ManualClock())
    device = CountingDevice(0, backend=backend, pid=4_200_002, device_digest=True)
    data = write_model(tmp_path / "m.bin", 3 * SEGMENT + 5 * CHUNK + 17)
    resident, _ = seal_file(device, model="m", path=str(tmp_path / "m.bin"), options=OPTIONS)
    assert resident.manifest is not None
    assert list(resident.manifest.chunk_digests) == expected_chunks(data)
    assert resident.manifest.digest == expected_digest(data)
    segments = -(-len(data) // SEGMENT)
    assert segments == 5 and device.started == segments  # one per segment, none per staging buffer
    assert verify_resident(device, resident, OPTIONS) == expected_chunks(data)
    assert device.started == 2 * segments
    resident.free(device)
    assert backend.our_bytes(0) == 0


def test_through_the_manager_verify_names_the_tampered_chunk(tmp_path: Path) -> None:
    data = write_model(tmp_path / "m.bin", 2 * MiB + 3)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")], device_digest=True)
    sealed = world.manager.load_blocking("m", timeout_s=10)
    assert sealed is not None and sealed.digest == expected_digest(data)
    world.manager.tamper_for_tests("m", offset=len(data) - 1)  # the very last byte: the short last chunk
    with pytest.raises(SealVerificationFailed) as info:
        world.manager.verify("m")
    assert info.value.damaged_chunks == [len(data) // CHUNK]


def test_out_of_memory_and_truncation_still_free_everything(tmp_path: Path) -> None:
    timeline = '[[timeline]]\nat = 10.0\nevent = "process_start"\npid = 900\nname = "game"\nused = "64 MiB"\n'
    clock = ManualClock()
    backend = SimulatedBackend(parse_scenario(scenario_text(timeline=timeline)), clock=clock)
    device = SimulatedDevice(0, backend=backend, pid=4_200_003, device_digest=True)
    path = tmp_path / "m.bin"
    write_model(path, 4 * SEGMENT)
    with pytest.raises(CudaAllocationFailed):
        seal_file(device, model="m", path=str(path), options=OPTIONS, progress=lambda d, t: clock.set(20.0))
    assert backend.our_bytes(0) == 0 and device.collect_digests() == []
    clock.set(0.0)

    def shrink(done: int, total: int) -> None:
        if done == STAGING:
            os.truncate(path, SEGMENT + 10)

    with pytest.raises(ModelFileError, match="ended early"):
        seal_file(device, model="m", path=str(path), options=OPTIONS, progress=shrink)
    assert backend.our_bytes(0) == 0 and device.allocated_bytes == 0
