"""The residency host on a real NVIDIA GPU: seal a multi-GiB file, verify it, tamper one byte in VRAM, evict
and see through NVML that nothing of ours is left; a foreign process grabbing memory mid-seal; kill -9.

Runs with the GPU machine's plain python3 (CuPy, nvidia-ml-py, numpy, psutil, pytest): no app.core.config
here (it needs tomlkit and platformdirs), so the settings are a small stand-in with the same fields.
"""

from __future__ import annotations

import hashlib
import multiprocessing.connection
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core import events as ev
from app.core.errors import CudaAllocationFailed, SealVerificationFailed
from app.core.holders import ModelState
from app.core.residency.host.process import ProcessHostLauncher
from app.core.residency.ledger import Ledgers
from app.core.residency.manager import ResidencyManager
from app.core.residency.seal import SealOptions
from app.core.settings import ModelConfig, Settings

GiB = 1 << 30
MiB = 1 << 20
CHUNK = 1 * MiB  # the digest's chunk (the default)
BLOCK = 64 * MiB  # how the test file is written
FILE_BYTES = 4 * GiB


def write_model_file(path: Path, nbytes: int) -> None:
    """Random bytes, quickly: one random block, each copy stamped with its index so no two chunks match."""
    block = bytearray(os.urandom(BLOCK))
    with open(path, "wb") as f:
        for i in range(-(-nbytes // BLOCK)):
            block[:8] = i.to_bytes(8, "little")
            f.write(block[: min(BLOCK, nbytes - i * BLOCK)])


def independent_digest(path: Path) -> str:
    outer = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            for i in range(0, len(block), CHUNK):
                outer.update(hashlib.sha256(block[i : i + CHUNK]).digest())
    return outer.hexdigest()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("models") / "big.bin"
    write_model_file(path, FILE_BYTES)
    yield path
    path.unlink()


@dataclass
class Real:
    manager: ResidencyManager
    backend: object
    ledgers: Ledgers

    def observe(self) -> None:
        self.ledgers.observe_snapshot(self.backend.sample())  # type: ignore[attr-defined]

    def nvml_pids(self) -> dict[int, int | None]:
        snapshot = self.backend.sample().gpu(0)  # type: ignore[attr-defined]
        return {p.pid: p.used_bytes for p in snapshot.processes}


@pytest.fixture
def real(tmp_path: Path, model_file: Path, request: pytest.FixtureRequest) -> Iterator[Real]:
    path = getattr(
        request, "param", "mapped"
    )  # parametrized indirectly: how the file reaches VRAM, where hashed
    device_digest, map_files = {"mapped": (True, True), "staging": (True, False), "cpu": (False, False)}[path]
    from app.core.gpu.nvml import NvmlBackend

    backend = NvmlBackend()
    ledgers = Ledgers(headroom_bytes=lambda total: 2 * GiB)
    manager = ResidencyManager(
        Settings(models=(ModelConfig("big", model_file, gpu=0),)),
        ledgers,
        ProcessHostLauncher(),
        measure_backend=backend,
        manifest_dir=tmp_path / "manifests",
        seal_options=SealOptions(segment_bytes=256 * MiB, device_digest=device_digest, map_files=map_files),
        reply_timeout_s=120.0,
    )
    world = Real(manager, backend, ledgers)
    world.observe()
    yield world
    manager.close()
    backend.close()


@pytest.mark.parametrize(
    "real",
    ["mapped", "staging", "cpu"],
    ids=["gpu-digest-mapped", "gpu-digest-staging", "cpu-digest"],
    indirect=True,
)
def test_seal_verify_tamper_and_evict_to_zero(real: Real, model_file: Path) -> None:
    sealed = real.manager.load_blocking("big", timeout_s=300)
    assert sealed is not None and sealed.bytes == FILE_BYTES
    assert sealed.digest == independent_digest(model_file)
    print(
        f"\nseal: {FILE_BYTES / GiB:.0f} GiB in {sealed.seconds:.2f} s = {sealed.bytes_per_s / 1e9:.1f} GB/s"
    )
    (pid,) = real.manager.pids()
    seen = real.nvml_pids()
    assert pid in seen, f"NVML does not list our host pid {pid} (a pid namespace?): {seen}"
    assert (seen[pid] or 0) >= FILE_BYTES

    assert real.manager.verify_now("big").digest == sealed.digest
    offset = 3 * BLOCK + 12345
    real.manager.tamper_for_tests("big", offset)
    with pytest.raises(SealVerificationFailed) as info:
        real.manager.verify_now("big")
    assert info.value.damaged_chunks == [offset // CHUNK]

    started = time.monotonic()
    (freed,) = real.manager.evict(["big"], "game")
    took = time.monotonic() - started
    print(f"evict of {FILE_BYTES / GiB:.0f} GiB to zero in NVML: {took * 1000:.0f} ms")
    assert isinstance(freed, ev.VramDeallocated) and freed.residue_bytes == 0
    assert pid not in real.nvml_pids() and real.manager.pids() == set()
    assert took < 5.0


def _grabber_script() -> str:
    return (
        "import sys, cupy as cp\n"
        "cp.cuda.runtime.memGetInfo()\n"
        "print('READY', flush=True)\n"
        "sys.stdin.readline()\n"
        "free, _ = cp.cuda.runtime.memGetInfo()\n"
        "block = cp.cuda.Memory(free - 256 * 1024 * 1024)\n"
        "print('GRABBED', free, flush=True)\n"
        "sys.stdin.read()\n"
    )


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=timeout_s):
            raise AssertionError("the foreign process did not answer")
        return process.stdout.readline()


def test_a_foreign_process_grabbing_vram_mid_seal_gives_a_retriable_error_and_no_residue(
    real: Real,
) -> None:
    grabber = subprocess.Popen(
        [sys.executable, "-c", _grabber_script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert _read_line(grabber, 120).startswith("READY")
        real.observe()
        grabbed: list[int] = []
        host_pids: list[int] = []

        def grab_when_started(done: int, total: int) -> None:
            if not grabbed:  # the seal has begun: now take (almost) all free VRAM, as a game would
                assert grabber.stdin is not None
                grabber.stdin.write("go\n")
                grabber.stdin.flush()
                assert _read_line(grabber, 60).startswith("GRABBED")
                grabbed.append(done)
                host = real.manager.host_handle(0)
                assert host is not None
                host_pids.append(host.pid)

        with pytest.raises(CudaAllocationFailed) as info:
            real.manager.load_blocking("big", progress=grab_when_started, timeout_s=300)
        print(f"\nforeign grab after {grabbed[0] / GiB:.2f} GiB: {info.value.message}")
        assert grabbed and info.value.retriable
        assert real.manager.pids() == set() and real.manager.models()[0].state == ModelState.FAILED
        ours = [p for p in real.nvml_pids() if p in host_pids]
        assert ours == [], f"our host still shows in NVML: {ours}"
    finally:
        if grabber.stdin is not None:
            grabber.stdin.close()
        grabber.wait(30)


def test_kill_9_of_the_host_is_detected_and_nothing_of_ours_remains(real: Real) -> None:
    real.manager.load_blocking("big", timeout_s=300)
    handle = real.manager.host_handle(0)
    assert handle is not None
    os.kill(handle.pid, signal.SIGKILL)
    assert multiprocessing.connection.wait([handle.conn], timeout=30)
    died = [e for e in real.manager.poll() if isinstance(e, ev.HostDied)]
    assert len(died) == 1 and died[0].exit_code == -signal.SIGKILL
    assert real.manager.models()[0].state == ModelState.EVICTED
    deadline = time.monotonic() + 10
    while handle.pid in real.nvml_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.pid not in real.nvml_pids()
