"""CudaCheckpointDriver (ctypes over libcuda.so.1) against the stand-in libcuda.so.1 built from fake_cuda.c,
with the NVML stand-in showing where the process's memory is, read through the project's real NvmlBackend."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.freeze.api import (
    CUDA_ERROR_ILLEGAL_STATE,
    CUDA_ERROR_INVALID_VALUE,
    CUDA_ERROR_NOT_SUPPORTED,
    CUDA_ERROR_OPERATING_SYSTEM,
    CUDA_ERROR_OUT_OF_MEMORY,
    CUDA_ERROR_TIMEOUT,
    CheckpointDriver,
    CheckpointError,
    FreezingUnavailable,
    ProcessState,
)
from app.core.freeze.driver import NEEDS_R570, CudaCheckpointDriver, open_driver
from app.core.gpu.nvml import NvmlBackend
from app.core.gpu.snapshot import GpuSnapshot
from app.core.units import GiB, MiB
from tests.fixtures import fake_cuda as fake_cuda_lib
from tests.fixtures.fake_cuda import FakeCuda, delay_line, pid_line
from tests.fixtures.fake_nvml import FakeNvml, gpu_line, proc_line

PID = 4_100_001  # above any pid_max default: no real process answers to it
OTHER = 4_100_002
TOTAL = 80 * GiB
DESKTOP = 1 * GiB  # what the rest of the GPU holds


def nvml_state(app_bytes: int = 8 * GiB, *, other_bytes: int = DESKTOP) -> str:
    return gpu_line(0, name="NVIDIA_H100", total=TOTAL, used=app_bytes + other_bytes) + proc_line(
        PID, app_bytes, name="python3"
    )


def gpu0(backend: NvmlBackend) -> GpuSnapshot:
    snap = backend.sample()
    assert snap.state == "ok", snap.message
    gpu = snap.gpu(0)
    assert gpu is not None
    return gpu


@pytest.fixture
def backend() -> Iterator[NvmlBackend]:
    nvml = NvmlBackend()
    yield nvml
    nvml.close()


@pytest.fixture
def driver(fake_cuda: FakeCuda) -> CudaCheckpointDriver:
    return fake_cuda.open_driver()


def code_of(excinfo: pytest.ExceptionInfo[CheckpointError]) -> tuple[str, int, int, str]:
    error = excinfo.value
    return error.step, error.pid, error.code, error.name


# ---- a whole cycle -----------------------------------------------------------------------------------------


def test_freeze_and_restore_moves_the_memory_out_of_nvml_and_back(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver, backend: NvmlBackend
) -> None:
    protocol: CheckpointDriver = driver  # the class satisfies the freezer's protocol
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID))
    before = gpu0(backend)
    assert before.used_bytes == 9 * GiB
    assert before.process(PID) is not None and before.process(PID).used_bytes == 8 * GiB  # type: ignore[union-attr]

    assert protocol.state(PID) is ProcessState.RUNNING
    protocol.lock(PID, 10_000)
    assert protocol.state(PID) is ProcessState.LOCKED
    assert gpu0(backend).used_bytes == 9 * GiB  # locking moves nothing

    protocol.checkpoint(PID)
    assert protocol.state(PID) is ProcessState.CHECKPOINTED
    frozen = gpu0(backend)
    assert frozen.process(PID) is None  # as on the real driver: it leaves NVML's process list
    assert frozen.used_bytes == DESKTOP + 4 * MiB  # a 4 MiB residue stays on the device
    assert frozen.free_bytes == before.free_bytes + 8 * GiB - 4 * MiB

    protocol.restore(PID)
    assert protocol.state(PID) is ProcessState.LOCKED
    restored = gpu0(backend)
    assert restored.used_bytes == before.used_bytes
    assert restored.process(PID) == before.process(PID)

    protocol.unlock(PID)
    assert protocol.state(PID) is ProcessState.RUNNING
    assert fake_nvml.state_file.read_text().count(f"pid={PID}") == 1
    for step in ("Lock", "Checkpoint", "Restore", "Unlock"):
        assert fake_cuda.calls(f"cuCheckpointProcess{step}") == 1
    assert fake_cuda.calls("cuInit") == 1


def test_a_second_cycle_works_like_the_first(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver, backend: NvmlBackend
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID))
    for _ in range(2):
        driver.lock(PID, 0)
        driver.checkpoint(PID)
        assert gpu0(backend).process(PID) is None
        driver.restore(PID)
        driver.unlock(PID)
        assert gpu0(backend).process(PID).used_bytes == 8 * GiB  # type: ignore[union-attr]
    assert gpu0(backend).used_bytes == 9 * GiB


def test_listed_residue_and_a_process_on_two_gpus(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver, backend: NvmlBackend
) -> None:
    fake_nvml.write(
        gpu_line(0, total=TOTAL, used=6 * GiB)
        + gpu_line(1, total=TOTAL, used=3 * GiB)
        + proc_line(PID, 5 * GiB, gpu=0)
        + proc_line(PID, 2 * GiB, gpu=1)
    )
    fake_cuda.write(pid_line(PID, listed=1, residue=8 * MiB))
    driver.lock(PID, 1000)
    driver.checkpoint(PID)
    snap = backend.sample()
    assert [g.used_bytes for g in snap.gpus] == [1 * GiB + 8 * MiB, 1 * GiB + 8 * MiB]
    assert [g.process(PID).used_bytes for g in snap.gpus] == [8 * MiB, 8 * MiB]  # type: ignore[union-attr]
    driver.restore(PID)
    driver.unlock(PID)
    snap = backend.sample()
    assert [g.used_bytes for g in snap.gpus] == [6 * GiB, 3 * GiB]
    assert [g.process(PID).used_bytes for g in snap.gpus] == [5 * GiB, 2 * GiB]  # type: ignore[union-attr]


# ---- wrong order -------------------------------------------------------------------------------------------


def test_wrong_order_calls_answer_illegal_state_and_change_nothing(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID))
    # RUNNING: only lock is allowed
    for step, call in (
        ("checkpoint", driver.checkpoint),
        ("restore", driver.restore),
        ("unlock", driver.unlock),
    ):
        with pytest.raises(CheckpointError) as excinfo:
            call(PID)
        assert code_of(excinfo) == (step, PID, CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE")
        assert driver.state(PID) is ProcessState.RUNNING
    driver.lock(PID, 1000)
    # LOCKED: no second lock, no restore
    with pytest.raises(CheckpointError) as excinfo:
        driver.lock(PID, 1000)
    assert excinfo.value.code == CUDA_ERROR_ILLEGAL_STATE
    with pytest.raises(CheckpointError):
        driver.restore(PID)
    driver.checkpoint(PID)
    # CHECKPOINTED: no unlock, no second checkpoint, no lock
    for call in (driver.unlock, driver.checkpoint, lambda pid: driver.lock(pid, 0)):
        with pytest.raises(CheckpointError) as excinfo:
            call(PID)
        assert excinfo.value.code == CUDA_ERROR_ILLEGAL_STATE
    assert driver.state(PID) is ProcessState.CHECKPOINTED
    assert "pid=" not in fake_nvml.state_file.read_text()  # still out, once
    driver.restore(PID)
    driver.unlock(PID)
    assert fake_nvml.state_file.read_text().count(f"pid={PID}") == 1


def test_error_message_and_unknown_codes(driver: CudaCheckpointDriver) -> None:
    with pytest.raises(CheckpointError) as excinfo:
        driver.lock(PID, 100)
    assert str(excinfo.value) == f"lock of pid {PID} failed: CUDA_ERROR_INVALID_VALUE (1)"
    assert driver.error_name(CUDA_ERROR_OUT_OF_MEMORY) == "CUDA_ERROR_OUT_OF_MEMORY"
    assert driver.error_name(12345) == "CUDA_ERROR_12345"


# ---- out of memory at restore: stuck -----------------------------------------------------------------------


def test_restore_without_room_fails_and_the_process_is_stuck_for_good(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver, backend: NvmlBackend
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID))
    driver.lock(PID, 1000)
    driver.checkpoint(PID)
    # a game takes all but 4 GiB while the app is frozen
    game = TOTAL - DESKTOP - 4 * MiB - 4 * GiB
    fake_nvml.write(
        gpu_line(0, name="NVIDIA_H100", total=TOTAL, used=DESKTOP + 4 * MiB + game)
        + proc_line(77, game, kind="graphics")
    )
    with pytest.raises(CheckpointError) as excinfo:
        driver.restore(PID)
    assert excinfo.value.out_of_memory
    assert code_of(excinfo) == ("restore", PID, CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY")
    assert driver.state(PID) is ProcessState.CHECKPOINTED
    assert fake_cuda.stuck(PID)
    assert gpu0(backend).process(PID) is None  # nothing came back

    fake_nvml.write(gpu_line(0, name="NVIDIA_H100", total=TOTAL, used=DESKTOP + 4 * MiB))  # the game ended
    with pytest.raises(CheckpointError) as excinfo:
        driver.restore(PID)
    assert code_of(excinfo) == ("restore", PID, CUDA_ERROR_OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM")
    with pytest.raises(CheckpointError) as excinfo:
        driver.unlock(PID)
    assert excinfo.value.code == CUDA_ERROR_ILLEGAL_STATE
    assert driver.state(PID) is ProcessState.CHECKPOINTED
    assert gpu0(backend).used_bytes == DESKTOP + 4 * MiB


def test_restore_with_just_enough_room_succeeds(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver, backend: NvmlBackend
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID))
    driver.lock(PID, 1000)
    driver.checkpoint(PID)
    moved = 8 * GiB - 4 * MiB
    filler = TOTAL - DESKTOP - 4 * MiB - moved  # leaves exactly what must come back
    text = fake_nvml.state_file.read_text().replace(
        f"used={DESKTOP + 4 * MiB}", f"used={DESKTOP + 4 * MiB + filler}"
    )
    fake_nvml.write(text)
    driver.restore(PID)
    assert gpu0(backend).free_bytes == 0


def test_oom_forced_by_the_state_file(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID, oom_restore=1))
    driver.lock(PID, 1000)
    driver.checkpoint(PID)
    with pytest.raises(CheckpointError) as excinfo:
        driver.restore(PID)
    assert excinfo.value.out_of_memory
    fake_cuda.write(pid_line(PID))  # lifting the cause does not help: stuck
    with pytest.raises(CheckpointError) as excinfo:
        driver.restore(PID)
    assert excinfo.value.code == CUDA_ERROR_OPERATING_SYSTEM


def test_an_ipc_importer_checkpoints_but_never_restores(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID, ipc="importer"))
    driver.lock(PID, 1000)
    driver.checkpoint(PID)
    with pytest.raises(CheckpointError) as excinfo:
        driver.restore(PID)
    assert excinfo.value.code == CUDA_ERROR_INVALID_VALUE
    with pytest.raises(CheckpointError) as excinfo:
        driver.restore(PID)
    assert excinfo.value.code == CUDA_ERROR_OPERATING_SYSTEM
    assert fake_cuda.stuck(PID)


# ---- refusals ----------------------------------------------------------------------------------------------


def test_managed_memory_is_refused_at_checkpoint_and_the_process_unlocks(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver, backend: NvmlBackend
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID, managed=1))
    driver.lock(PID, 1000)
    with pytest.raises(CheckpointError) as excinfo:
        driver.checkpoint(PID)
    assert code_of(excinfo) == ("checkpoint", PID, CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED")
    assert driver.state(PID) is ProcessState.LOCKED
    assert gpu0(backend).process(PID).used_bytes == 8 * GiB  # type: ignore[union-attr]  # nothing moved
    driver.unlock(PID)
    assert driver.state(PID) is ProcessState.RUNNING


def test_another_users_process_is_refused(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver
) -> None:
    fake_nvml.write(nvml_state())
    fake_cuda.write(pid_line(PID, user="other"))
    with pytest.raises(CheckpointError) as excinfo:
        driver.state(PID)
    assert excinfo.value.not_permitted
    assert code_of(excinfo) == ("state", PID, CUDA_ERROR_OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM")
    with pytest.raises(CheckpointError) as excinfo:
        driver.lock(PID, 1000)
    assert excinfo.value.not_permitted
    assert fake_cuda.state(PID) is None  # never touched


def test_a_pid_that_does_not_exist(fake_cuda: FakeCuda, driver: CudaCheckpointDriver) -> None:
    fake_cuda.write(pid_line(PID))
    for call in (
        driver.state,
        lambda pid: driver.lock(pid, 10),
        driver.checkpoint,
        driver.restore,
        driver.unlock,
    ):
        with pytest.raises(CheckpointError) as excinfo:
            call(OTHER)
        assert (excinfo.value.pid, excinfo.value.code) == (OTHER, CUDA_ERROR_INVALID_VALUE)


def test_a_process_that_exits_while_frozen_is_forgotten(
    fake_cuda: FakeCuda, fake_nvml: FakeNvml, driver: CudaCheckpointDriver
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake_nvml.write(gpu_line(0, total=TOTAL, used=3 * GiB) + proc_line(child.pid, 2 * GiB))
        fake_cuda.write(pid_line(child.pid, live=1))
        driver.lock(child.pid, 1000)
        driver.checkpoint(child.pid)
        assert fake_cuda.state(child.pid) is ProcessState.CHECKPOINTED
    finally:
        child.kill()
        child.wait()
    with pytest.raises(CheckpointError) as excinfo:
        driver.state(child.pid)
    assert excinfo.value.code == CUDA_ERROR_INVALID_VALUE
    assert fake_cuda.state(child.pid) is None


# ---- lock timeout, delays, threads -------------------------------------------------------------------------


def test_lock_times_out_on_a_busy_process_and_leaves_it_running(
    fake_cuda: FakeCuda, driver: CudaCheckpointDriver
) -> None:
    fake_cuda.write(pid_line(PID, busy_ms=400))
    started = time.monotonic()
    with pytest.raises(CheckpointError) as excinfo:
        driver.lock(PID, 50)
    assert excinfo.value.code == CUDA_ERROR_TIMEOUT
    assert 0.04 <= time.monotonic() - started < 0.35
    assert driver.state(PID) is ProcessState.RUNNING
    driver.lock(PID, 0)  # no limit: waits for the work to drain
    assert driver.state(PID) is ProcessState.LOCKED


def test_calls_from_two_threads_are_serialized(fake_cuda: FakeCuda, driver: CudaCheckpointDriver) -> None:
    fake_cuda.write(pid_line(PID) + pid_line(OTHER) + delay_line(checkpoint=150))
    for pid in (PID, OTHER):
        driver.lock(pid, 1000)
    errors: list[BaseException] = []

    def freeze(pid: int) -> None:
        try:
            driver.checkpoint(pid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=freeze, args=(pid,)) for pid in (PID, OTHER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert time.monotonic() - started >= 0.29  # one after the other, under the driver's lock
    assert {driver.state(PID), driver.state(OTHER)} == {ProcessState.CHECKPOINTED}


# ---- opening the driver ------------------------------------------------------------------------------------


def test_no_library_means_no_driver(tmp_path: Path) -> None:
    with pytest.raises(FreezingUnavailable, match=r"^no NVIDIA driver"):
        open_driver(library=tmp_path / "libcuda.so.1")


def test_a_driver_without_the_checkpoint_api_needs_r570(fake_cuda: FakeCuda, tmp_path: Path) -> None:
    old = fake_cuda_lib.build(tmp_path / "r560", checkpoint_api=False)
    with pytest.raises(FreezingUnavailable) as excinfo:
        open_driver(library=old)
    assert str(excinfo.value) == NEEDS_R570 == "freezing unavailable (driver r570 or later needed)"


def test_cuinit_failing_is_named(fake_cuda: FakeCuda) -> None:
    fake_cuda.write("init no_device\n")
    with pytest.raises(FreezingUnavailable, match=r"cuInit failed with CUDA_ERROR_NO_DEVICE \(100\)"):
        fake_cuda.open_driver()
    fake_cuda.write("init ok\n")
    assert fake_cuda.open_driver().cuda_version == 13000
    assert fake_cuda.calls("cuInit") == 2


def test_only_the_freeze_package_calls_the_checkpoint_api() -> None:
    """DESIGN's rule: the driver's checkpoint entry points are reached from app/core/freeze alone."""
    repo = Path(__file__).resolve().parents[3]
    call = re.compile(r"""\.cuCheckpointProcess\w+|["']cuCheckpointProcess\w+["']""")
    offenders = [
        str(path.relative_to(repo))
        for folder in ("app", "bench")
        for path in (repo / folder).rglob("*.py")
        if call.search(path.read_text(errors="replace")) and (repo / "app/core/freeze") not in path.parents
    ]
    assert offenders == []
