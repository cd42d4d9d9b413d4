"""The freezer's cheap checks before a freeze (app/core/freeze/checks.py): host RAM, graphics, signs of
managed memory in /proc/PID/maps, another user's process; with real processes where the check reads the
system."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.core.freeze import checks
from app.core.freeze.checks import (
    HOST_RAM_MARGIN_BYTES,
    MapsHints,
    belongs_to_other_user,
    host_ram,
    maps_hints,
    needs_privilege,
    owner_uid,
    process_refusal,
    scan_maps,
    uses_graphics,
)
from app.core.gpu.nvml import NvmlBackend
from app.core.gpu.snapshot import BackendState, GpuProcess, GpuSnapshot, ProcessKind, TelemetrySnapshot
from app.core.units import GiB, MiB, TiB
from tests.fixtures.fake_nvml import FakeNvml, gpu_line, proc_line

GONE = 4_100_003  # above any pid_max default: no such process


def gpu(index: int, *processes: GpuProcess) -> GpuSnapshot:
    return GpuSnapshot(index, "GPU", f"GPU-{index}", 24 * GiB, 0, 24 * GiB, 0, None, None, processes)


def telemetry(*gpus: GpuSnapshot) -> TelemetrySnapshot:
    return TelemetrySnapshot("nvml", BackendState.OK, 0.0, gpus)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


# ---- host RAM ----------------------------------------------------------------------------------------------


def test_host_ram_counts_available_memory_and_free_swap_less_a_margin() -> None:
    check = host_ram(10 * GiB, margin_bytes=1 * GiB, memory=lambda: (8 * GiB, 3 * GiB))
    assert (check.room_bytes, check.fits, check.reason) == (10 * GiB, True, None)
    check = host_ram(10 * GiB + 1, margin_bytes=1 * GiB, memory=lambda: (8 * GiB, 3 * GiB))
    assert not check.fits
    assert check.reason == (
        "not enough host memory to freeze: 10.0 GiB would move to RAM, but only 10.0 GiB is free "
        "(8.0 GiB RAM available + 3.0 GiB swap free, less 1.0 GiB kept for the system)"
    )
    assert host_ram(1, memory=lambda: (512 * MiB, 0)).room_bytes == 0  # never negative


def test_host_ram_of_this_machine() -> None:
    available = psutil.virtual_memory().available + psutil.swap_memory().free
    check = host_ram(0)
    assert check.margin_bytes == HOST_RAM_MARGIN_BYTES
    assert abs(check.available_bytes + check.swap_free_bytes - available) < 512 * MiB  # the system moves
    assert check.fits
    assert not host_ram(64 * TiB).fits


# ---- graphics ----------------------------------------------------------------------------------------------


def test_graphics_and_both_count_as_graphics_on_any_gpu() -> None:
    snap = telemetry(
        gpu(
            0,
            GpuProcess(10, "python3", GiB, ProcessKind.COMPUTE),
            GpuProcess(11, "game", GiB, ProcessKind.GRAPHICS),
        ),
        gpu(
            1,
            GpuProcess(12, "blender", GiB, ProcessKind.BOTH),
            GpuProcess(10, "python3", GiB, ProcessKind.COMPUTE),
        ),
    )
    assert [uses_graphics(pid, snap) for pid in (10, 11, 12, 13)] == [False, True, True, False]
    assert uses_graphics(12, snap.gpus[1]) and not uses_graphics(12, snap.gpus[0])
    assert uses_graphics(11, list(snap.gpus))


def test_graphics_through_the_real_nvml_backend(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(
        gpu_line(0, total=24 * GiB, used=6 * GiB)
        + proc_line(100, 2 * GiB, kind="compute", name="python3")
        + proc_line(101, 3 * GiB, kind="graphics", name="game")
        + proc_line(102, GiB, kind="both", name="blender")
    )
    backend = NvmlBackend()
    try:
        snap = backend.sample()
    finally:
        backend.close()
    assert [uses_graphics(pid, snap) for pid in (100, 101, 102)] == [False, True, True]
    assert process_refusal(101, snap) is not None and "graphics" in str(process_refusal(101, snap))


# ---- managed memory ----------------------------------------------------------------------------------------

PLAIN_MAPS = """\
00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/python3
200000000-200200000 rw-s 00000000 00:05 1037 /dev/nvidiactl
200200000-200400000 ---p 00000000 00:00 0
7f0000000000-7f0000200000 rw-s 00000000 00:05 1040 /dev/nvidia-uvm
7f0000200000-7f0400200000 ---p 00000000 00:05 1040 /dev/nvidia-uvm
7f1000000000-7f1000001000 rw-s 00000000 00:05 1038 /dev/nvidia0
7ffd0000000-7ffd0021000 rw-p 00000000 00:00 0 [stack]
"""
MANAGED_MAPS = PLAIN_MAPS + "7f2000000000-7f2010000000 rw-s 00000000 00:05 1040 /dev/nvidia-uvm\n"


def test_maps_of_a_plain_cuda_process_suggest_no_managed_memory() -> None:
    hints = scan_maps(PLAIN_MAPS)
    assert hints == MapsHints(readable=True, uvm_mappings=2, uvm_rw_bytes=2 * MiB)
    assert not hints.managed_memory and hints.reason is None


def test_maps_with_a_large_writable_uvm_mapping_suggest_managed_memory() -> None:
    hints = scan_maps(MANAGED_MAPS)
    assert hints.uvm_rw_bytes == 2 * MiB + 256 * MiB
    assert hints.managed_memory
    assert hints.reason == (
        "it seems to use CUDA managed memory (258.0 MiB of /dev/nvidia-uvm mapped), "
        "which the driver cannot freeze"
    )


def test_maps_of_real_processes(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    own = maps_hints(os.getpid())
    assert own.readable and own.uvm_mappings == 0 and not own.managed_memory
    assert maps_hints(sleeper.pid).readable
    assert maps_hints(GONE) == MapsHints(readable=False)
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "maps").write_text(MANAGED_MAPS)
    assert maps_hints(42, proc_root=tmp_path).managed_memory


# ---- other users -------------------------------------------------------------------------------------------


def test_own_processes_are_not_another_users(sleeper: subprocess.Popen[bytes]) -> None:
    assert owner_uid(sleeper.pid) == os.getuid()
    assert not belongs_to_other_user(os.getpid())
    assert not belongs_to_other_user(sleeper.pid)
    assert not needs_privilege(sleeper.pid)
    with pytest.raises(ProcessLookupError):
        belongs_to_other_user(GONE)


@pytest.mark.skipif(os.getuid() != 0, reason="starting another user's process needs root")
def test_another_users_process(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "60"], user=65534, group=65534)
    try:
        assert owner_uid(child.pid) == 65534
        assert belongs_to_other_user(child.pid)
        assert not needs_privilege(child.pid)  # root may freeze anyone's process
        assert process_refusal(child.pid, telemetry()) is None
        monkeypatch.setattr(checks.os, "geteuid", lambda: 1000)  # as a user without the privilege
        assert needs_privilege(child.pid)
        assert process_refusal(child.pid, telemetry()) == (
            "it belongs to another user; freezing it needs the privileged helper"
        )
    finally:
        child.kill()
        child.wait()


def test_another_users_process_seen_by_a_normal_user(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rule for whoever runs the tests: our own child, seen by a different (non-root) uid."""
    someone_else = os.getuid() + 1
    monkeypatch.setattr(checks.os, "getuid", lambda: someone_else)
    monkeypatch.setattr(checks.os, "geteuid", lambda: someone_else)
    assert belongs_to_other_user(sleeper.pid)
    assert needs_privilege(sleeper.pid)


# ---- all of them -------------------------------------------------------------------------------------------


def test_process_refusal_order_and_a_clean_process(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    compute = telemetry(gpu(0, GpuProcess(sleeper.pid, "python3", GiB, ProcessKind.COMPUTE)))
    assert process_refusal(sleeper.pid, compute) is None
    (tmp_path / str(sleeper.pid)).mkdir()
    (tmp_path / str(sleeper.pid) / "maps").write_text(MANAGED_MAPS)
    assert "managed memory" in str(process_refusal(sleeper.pid, compute, proc_root=tmp_path))
    graphics = telemetry(gpu(0, GpuProcess(sleeper.pid, "python3", GiB, ProcessKind.BOTH)))
    assert "graphics" in str(process_refusal(sleeper.pid, graphics, proc_root=tmp_path))  # graphics first
    assert process_refusal(GONE, telemetry()) == "the process is gone"
