"""The real spawned host process (spawn start method, as on CUDA and in a frozen bundle) with host memory
standing in for VRAM: load, verify, tamper, evict (the process ends), and a SIGKILL noticed in one poll."""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from residency_world import CHUNK, expected_digest, write_model

from app.core import events as ev
from app.core.config import ModelConfig, Settings
from app.core.errors import SealVerificationFailed
from app.core.holders import ModelState
from app.core.residency.host.process import ProcessHostLauncher
from app.core.residency.ledger import Ledger
from app.core.residency.manager import ResidencyManager
from app.core.residency.seal import SealOptions
from app.core.residency.simulated_device import HostMemoryDeviceFactory
from app.core.units import GiB, MiB


def spawned_manager(tmp_path: Path, path: Path) -> ResidencyManager:
    ledger = Ledger(0, headroom_bytes=lambda total: 0)
    ledger.observe(total_bytes=1 * GiB, free_bytes=1 * GiB, sampled_at=time.monotonic())
    return ResidencyManager(
        Settings(models=(ModelConfig(name="m", path=path, gpu=0),)),
        {0: ledger},
        ProcessHostLauncher(HostMemoryDeviceFactory, context_overhead_bytes=0),
        manifest_dir=tmp_path / "manifests",
        seal_options=SealOptions(
            chunk_size_bytes=CHUNK, staging_bytes=2 * CHUNK, segment_bytes=4 * CHUNK, hash_threads=2
        ),
        reply_timeout_s=30.0,
    )


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_spawned_host_seals_verifies_and_ends_when_evicted(tmp_path: Path) -> None:
    data = write_model(tmp_path / "m.bin", 2 * MiB)
    manager = spawned_manager(tmp_path, tmp_path / "m.bin")
    try:
        sealed = manager.load_blocking("m", timeout_s=60)
        assert sealed is not None and sealed.digest == expected_digest(data)
        (pid,) = manager.pids()
        assert pid != os.getpid() and psutil.pid_exists(pid)
        assert manager.verify_now("m").digest == sealed.digest
        manager.tamper_for_tests("m", offset=3 * CHUNK)
        with pytest.raises(SealVerificationFailed) as info:
            manager.verify_now("m")
        assert info.value.damaged_chunks == [3]
        (event,) = manager.evict(["m"], "user")
        assert isinstance(event, ev.VramDeallocated) and event.bytes == len(data)
        assert gone(pid), "the host process must end when it holds no model"
    finally:
        manager.close()


def test_sigkill_of_the_spawned_host_is_noticed_in_one_poll(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 1 * MiB)
    manager = spawned_manager(tmp_path, tmp_path / "m.bin")
    try:
        manager.load_blocking("m", timeout_s=60)
        (pid,) = manager.pids()
        handle = manager.host_handle(0)
        assert handle is not None
        os.kill(pid, signal.SIGKILL)
        # the death is visible once the kernel has closed the host's end of the pipe (a zombie in /proc can
        # come a moment earlier in some sandboxes); from then on, one poll() must report it
        assert multiprocessing.connection.wait([handle.conn], timeout=5)
        died = [e for e in manager.poll() if isinstance(e, ev.HostDied)]
        assert len(died) == 1 and died[0].pid == pid and died[0].exit_code == -signal.SIGKILL
        assert manager.models()[0].state == ModelState.EVICTED
        assert manager.load_blocking("m", timeout_s=60) is not None  # a new host
        assert manager.pids() and pid not in manager.pids()
    finally:
        manager.close()


def test_a_stopped_host_does_not_stall_the_eviction(tmp_path: Path) -> None:
    """A host stopped with SIGSTOP (or hung) never answers the free: it is killed after the short free
    timeout, which frees its memory all the same; the eviction is bounded, not 60 s per request plus a
    minute's wait for the exit."""
    data = write_model(tmp_path / "m.bin", 2 * MiB)
    manager = spawned_manager(tmp_path, tmp_path / "m.bin")
    try:
        manager.load_blocking("m", timeout_s=60)
        (pid,) = manager.pids()
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        events = manager.evict(["m"], "game")
        took_s = time.monotonic() - started
        assert took_s < 3.0, f"the eviction waited {took_s:.1f} s on a stopped host"
        assert gone(pid, timeout_s=1.0), "the stopped host must be killed"
        reported = [*events, *manager.poll()]
        assert [e.pid for e in reported if isinstance(e, ev.HostDied)] == [pid]
        freed = [e for e in reported if isinstance(e, ev.VramDeallocated) and e.model == "m"]
        assert len(freed) == 1 and freed[0].bytes == len(data)
        assert manager.models()[0].state == ModelState.EVICTED
        assert manager.pids() == set()
    finally:
        manager.close()
