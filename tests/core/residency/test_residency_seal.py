"""seal_file / verify_resident on a SimulatedDevice accounted on a simulated GPU: the streaming pipeline,
every bad-file case, out-of-memory part-way, and what stays allocated afterwards (nothing)."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest
from residency_world import (
    CHUNK,
    SEAL_OPTIONS,
    SEGMENT,
    expected_chunks,
    expected_digest,
    scenario_text,
    write_model,
)

from app.core.errors import CudaAllocationFailed, ModelFileError
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.residency.seal import SealCancelled, SealOptions, seal_file, verify_resident
from app.core.residency.simulated_device import SimulatedDevice
from app.core.units import KiB, MiB

PID = 4_200_001


def gpu(total: str = "64 MiB", timeline: str = "") -> tuple[SimulatedBackend, ManualClock, SimulatedDevice]:
    clock = ManualClock()
    backend = SimulatedBackend(parse_scenario(scenario_text(total, timeline=timeline)), clock=clock)
    return backend, clock, SimulatedDevice(0, backend=backend, pid=PID)


def test_seal_streams_the_file_and_digests_it_like_hashlib(tmp_path: Path) -> None:
    backend, _, device = gpu()
    data = write_model(tmp_path / "m.bin", 2 * MiB + 12345)
    seen: list[tuple[int, int]] = []
    resident, seconds = seal_file(
        device,
        model="m",
        path=str(tmp_path / "m.bin"),
        options=SEAL_OPTIONS,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert resident.manifest is not None
    assert list(resident.manifest.chunk_digests) == expected_chunks(data)
    assert resident.manifest.digest == expected_digest(data)
    assert seconds >= 0
    # segments of SEGMENT bytes, the last one short; all accounted on the simulated GPU under our pid
    assert len(resident.blocks) == -(-len(data) // SEGMENT)
    assert backend.our_bytes(0, PID) == len(data) == device.allocated_bytes
    # progress: strictly increasing, ending at the total
    done = [d for d, _ in seen]
    assert done == sorted(set(done)) and done[-1] == len(data) and {t for _, t in seen} == {len(data)}
    # what is in "VRAM" is the file, byte for byte (staging buffers were never reused too early)
    assert verify_resident(device, resident, SEAL_OPTIONS) == expected_chunks(data)
    resident.free(device)
    assert backend.our_bytes(0) == 0


def test_one_staging_buffer_per_chunk_in_flight_still_gives_the_right_bytes(tmp_path: Path) -> None:
    _, _, device = gpu()
    data = write_model(tmp_path / "m.bin", 40 * CHUNK + 1)
    options = dataclasses.replace(SEAL_OPTIONS, staging_buffers=2, reader_threads=4, hash_threads=4)
    resident, _ = seal_file(device, model="m", path=str(tmp_path / "m.bin"), options=options)
    assert resident.manifest is not None and resident.manifest.digest == expected_digest(data)
    assert verify_resident(device, resident, options) == expected_chunks(data)


def test_a_changed_byte_in_device_memory_is_found_in_its_chunk(tmp_path: Path) -> None:
    _, _, device = gpu()
    write_model(tmp_path / "m.bin", 1 * MiB)
    resident, _ = seal_file(device, model="m", path=str(tmp_path / "m.bin"), options=SEAL_OPTIONS)
    assert resident.manifest is not None
    offset = 9 * CHUNK + 100
    block, inner = resident.locate(offset)
    device.write_byte(block, inner, device.read_byte(block, inner) ^ 1)
    assert resident.manifest.damaged_chunks(verify_resident(device, resident, SEAL_OPTIONS)) == [9]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (os.mkfifo(p), p)[1], "not a regular file"),
        (lambda p: (p.write_bytes(b""), p)[1], "is empty"),
    ],
    ids=["missing", "directory", "fifo", "empty"],
)
def test_bad_files_raise_model_file_error_and_allocate_nothing(tmp_path: Path, make, problem: str) -> None:
    backend, _, device = gpu()
    path = make(tmp_path / "model.bin")
    with pytest.raises(ModelFileError, match=problem) as info:
        seal_file(device, model="m", path=str(path), options=SEAL_OPTIONS)
    assert info.value.details["path"] == str(path) and not info.value.retriable
    assert backend.our_bytes(0) == 0 and device.allocated_bytes == 0


def test_permission_denied_is_a_model_file_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend, _, device = gpu()
    write_model(tmp_path / "m.bin", 1 * MiB)
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):  # tests run as root, where chmod 000 does not stop reads
        if str(path).endswith("m.bin"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ModelFileError, match="permission denied") as info:
        seal_file(device, model="m", path=str(tmp_path / "m.bin"), options=SEAL_OPTIONS)
    assert "readable" in info.value.user_message()
    assert backend.our_bytes(0) == 0


def test_a_file_truncated_while_streaming_frees_what_was_allocated(tmp_path: Path) -> None:
    backend, _, device = gpu()
    path = tmp_path / "m.bin"
    write_model(path, 3 * MiB)
    truncated = threading.Event()

    def shrink(done: int, total: int) -> None:
        if not truncated.is_set():  # after the first chunk: the reads in flight cover only a few chunks
            os.truncate(path, 1 * MiB)
            truncated.set()

    with pytest.raises(ModelFileError, match="ended early") as info:
        seal_file(device, model="m", path=str(path), options=SEAL_OPTIONS, progress=shrink)
    assert "truncated" in info.value.message
    assert truncated.is_set()
    assert backend.our_bytes(0) == 0 and device.allocated_bytes == 0


def test_a_file_that_grows_while_streaming_is_refused(tmp_path: Path) -> None:
    backend, _, device = gpu()
    path = tmp_path / "m.bin"
    write_model(path, 1 * MiB)

    def grow(done: int, total: int) -> None:
        if done == total:
            with open(path, "ab") as f:
                f.write(b"more")

    with pytest.raises(ModelFileError, match="changed size"):
        seal_file(device, model="m", path=str(path), options=SEAL_OPTIONS, progress=grow)
    assert backend.our_bytes(0) == 0


def test_out_of_memory_part_way_frees_everything_and_is_retriable(tmp_path: Path) -> None:
    # a game starts at t=10 and takes all that is left; the seal's second segment allocation comes after
    timeline = '[[timeline]]\nat = 10.0\nevent = "process_start"\npid = 900\nname = "game"\nused = "64 MiB"\n'
    backend, clock, device = gpu(timeline=timeline)
    write_model(tmp_path / "m.bin", 4 * SEGMENT)
    before = backend.our_bytes(0)

    def foreign_grab(done: int, total: int) -> None:
        clock.set(20.0)

    with pytest.raises(CudaAllocationFailed) as info:
        seal_file(
            device, model="m", path=str(tmp_path / "m.bin"), options=SEAL_OPTIONS, progress=foreign_grab
        )
    assert info.value.retriable and info.value.to_problem()["error"] == "cuda_allocation_failed"
    assert "out of memory after 262144" in info.value.message
    assert backend.our_bytes(0) == before == 0 and device.allocated_bytes == 0


def test_cancel_stops_the_seal_and_frees_it(tmp_path: Path) -> None:
    backend, _, device = gpu()
    write_model(tmp_path / "m.bin", 2 * MiB)
    cancel = threading.Event()
    with pytest.raises(SealCancelled):
        seal_file(
            device,
            model="m",
            path=str(tmp_path / "m.bin"),
            options=SEAL_OPTIONS,
            progress=lambda d, t: cancel.set() if d >= 4 * CHUNK else None,
            cancel=cancel,
        )
    assert backend.our_bytes(0) == 0


def test_options_resolve_to_whole_chunks_per_staging_and_whole_stagings_per_segment() -> None:
    options = SealOptions(
        chunk_size_bytes=64 * KiB,
        staging_bytes=100 * KiB,
        segment_bytes=200 * KiB,
        hash_threads=3,
        reader_threads=2,
    )
    resolved = options.resolved()
    assert (resolved.staging_bytes, resolved.segment_bytes) == (64 * KiB, 192 * KiB)
    assert resolved.staging_buffers == 3 + 2 + 2  # hashers + readers + 2 when the CPU hashes
    assert options.resolved(cpu_hashing=False).staging_buffers == 2 + 2
    for bad in (0, 100):
        with pytest.raises(ValueError, match="multiple of 64"):
            SealOptions(chunk_size_bytes=bad).resolved()
