"""The device-digest path of seal and verify (the one the CUDA kernel takes), run on a SimulatedDevice that
hashes its own blocks: same digests as hashlib, damaged chunks named, and failures part-way still free all."""

from __future__ import annotations

import dataclasses
import os
import threading
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
from app.core.residency.seal import SealCancelled, SealOptions, seal_file, verify_resident
from app.core.residency.simulated_device import SimulatedDevice
from app.core.units import MiB

OPTIONS = SealOptions(chunk_size_bytes=CHUNK, staging_bytes=STAGING, segment_bytes=SEGMENT, reader_threads=2)


class CountingDevice(SimulatedDevice):
    """Counts device-side digests, to prove the CPU did not hash."""

    started = 0

    def start_digest(self, block: int, nbytes: int, chunk_size_bytes: int) -> None:
        self.started += 1
        super().start_digest(block, nbytes, chunk_size_bytes)


@pytest.mark.parametrize("map_files", [True, False], ids=["mapped", "staging"])
def test_device_digests_equal_hashlib_and_need_one_start_per_segment(tmp_path: Path, map_files: bool) -> None:
    backend = SimulatedBackend(parse_scenario(scenario_text()), clock=ManualClock())
    device = CountingDevice(0, backend=backend, pid=4_200_002, device_digest=True)
    data = write_model(tmp_path / "m.bin", 3 * SEGMENT + 5 * CHUNK + 17)
    seen: list[int] = []
    options = dataclasses.replace(OPTIONS, map_files=map_files)
    resident, _ = seal_file(
        device, model="m", path=str(tmp_path / "m.bin"), options=options, progress=lambda d, t: seen.append(d)
    )
    assert resident.manifest is not None
    assert list(resident.manifest.chunk_digests) == expected_chunks(data)
    assert resident.manifest.digest == expected_digest(data)
    segments = -(-len(data) // SEGMENT)
    assert segments == 5 and device.started == segments  # one per segment, none per staging buffer
    # mapped: one window per segment copied straight from the file; staging: no window at all
    assert device.mapped_copies == (segments if map_files else 0)
    assert seen == sorted(seen) and seen[-1] == len(data)
    assert len(seen) == (segments if map_files else -(-len(data) // STAGING))
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
        world.manager.verify_now("m")
    assert info.value.damaged_chunks == [len(data) // CHUNK]


@pytest.mark.parametrize("map_files", [True, False], ids=["mapped", "staging"])
def test_out_of_memory_and_truncation_still_free_everything(tmp_path: Path, map_files: bool) -> None:
    """A game takes memory mid-seal; the file shrinks mid-seal. Mapped, the window past the new end cannot
    be page-locked (cudaHostRegister fails as the pread does here): the seal falls back to staging, which
    names the truncation."""
    timeline = '[[timeline]]\nat = 10.0\nevent = "process_start"\npid = 900\nname = "game"\nused = "64 MiB"\n'
    clock = ManualClock()
    backend = SimulatedBackend(parse_scenario(scenario_text(timeline=timeline)), clock=clock)
    device = SimulatedDevice(0, backend=backend, pid=4_200_003, device_digest=True)
    options = dataclasses.replace(OPTIONS, map_files=map_files)
    path = tmp_path / "m.bin"
    write_model(path, 4 * SEGMENT)
    with pytest.raises(CudaAllocationFailed):
        seal_file(device, model="m", path=str(path), options=options, progress=lambda d, t: clock.set(20.0))
    assert backend.our_bytes(0) == 0 and device.collect_digests() == []
    clock.set(0.0)

    def shrink(done: int, total: int) -> None:
        if done == (SEGMENT if map_files else STAGING):
            os.truncate(path, SEGMENT + 10)

    with pytest.raises(ModelFileError, match="ended early"):
        seal_file(device, model="m", path=str(path), options=options, progress=shrink)
    assert backend.our_bytes(0) == 0 and device.allocated_bytes == 0


def test_a_mapped_seal_cancelled_part_way_frees_everything_and_leaves_no_digest(tmp_path: Path) -> None:
    backend = SimulatedBackend(parse_scenario(scenario_text()), clock=ManualClock())
    device = SimulatedDevice(0, backend=backend, pid=4_200_004, device_digest=True)
    path = tmp_path / "m.bin"
    write_model(path, 4 * SEGMENT)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 2 * SEGMENT:
            cancel.set()

    with pytest.raises(SealCancelled):
        seal_file(
            device,
            model="m",
            path=str(path),
            options=dataclasses.replace(OPTIONS, map_files=True),
            progress=progress,
            cancel=cancel,
        )
    assert device.mapped_copies == 2
    assert backend.our_bytes(0) == 0 and device.allocated_bytes == 0
    assert device.collect_digests() == [], "no digest of the cancelled seal is left for the next one"


def test_mapping_is_off_by_default_and_a_device_that_cannot_map_falls_back_to_staging(tmp_path: Path) -> None:
    data = write_model(tmp_path / "m.bin", 2 * SEGMENT + 3)
    for options, can_map in [(OPTIONS, True), (dataclasses.replace(OPTIONS, map_files=True), False)]:
        backend = SimulatedBackend(parse_scenario(scenario_text()), clock=ManualClock())
        device = SimulatedDevice(0, backend=backend, pid=4_200_005, device_digest=True, map_files=can_map)
        resident, _ = seal_file(device, model="m", path=str(tmp_path / "m.bin"), options=options)
        assert device.mapped_copies == 0
        assert resident.manifest is not None and resident.manifest.digest == expected_digest(data)
        resident.free(device)
        assert backend.our_bytes(0) == 0
