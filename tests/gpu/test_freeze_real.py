"""Freezing a real PyTorch process through the CUDA driver's checkpoint API (driver r570+), on the GPU.

A game signal freezes a configured PyTorch process through the engine (its VRAM leaves NVML), the cooldown
restores it, and its data is identical; with PyTorch's default allocator, expandable_segments and
cudaMallocAsync; a process that exits while frozen; and 20 freeze/restore cycles that never leave it stuck.
Skipped, with the reason, where the driver has no checkpoint API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

GiB = 1 << 30

TARGET = """
import os, sys, torch
nbytes = int(sys.argv[1])
x = torch.arange(nbytes // 4, dtype=torch.int32, device="cuda")  # a pattern we can check
x.mul_(3).add_(7)
torch.cuda.synchronize()
def digest():
    value = int((x.to(torch.int64) * 2654435761 % 1000003).sum().item())
    # the int64 temporaries (32 GiB for 8 GiB of int32) stay in PyTorch's cache unless emptied, and a freeze
    # moves everything the process holds: without this the "8 GiB" process froze 40 GiB (15-16 s on an H100)
    torch.cuda.empty_cache()
    return value
print("READY", os.getpid(), digest(), flush=True)
for line in sys.stdin:
    if line.strip() == "check":
        print("DIGEST", digest(), flush=True)
"""


class Target:
    """A PyTorch process holding `nbytes` of a known pattern; `digest()` asks it to recompute its checksum."""

    def __init__(self, nbytes: int, alloc_conf: str | None = None) -> None:
        env = dict(os.environ)
        if alloc_conf:
            env["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
        self.process = subprocess.Popen(
            [sys.executable, "-c", TARGET, str(nbytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        assert line and line[0] == "READY", f"the target did not start: {line}"
        self.pid, self.first_digest = int(line[1]), int(line[2])

    def digest(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("check\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(30)


def nvml_used(pid: int) -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture
def driver() -> Any:
    pytest.importorskip("torch")
    from app.core.freeze.api import FreezingUnavailable
    from app.core.freeze.driver import open_driver

    try:
        return open_driver()
    except FreezingUnavailable as exc:
        pytest.skip(f"freezing unavailable here: {exc}")


@pytest.fixture
def targets() -> Iterator[list[Target]]:
    started: list[Target] = []
    yield started
    for target in started:
        target.stop()


def wait_until(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_game_freezes_an_8_gib_pytorch_process_and_the_cooldown_restores_it(
    driver: Any, targets: list[Target], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path))
    from app.core.engine.steward import Steward
    from app.core.freeze.holder import FreezeHolder, FreezeRule
    from app.core.gpu.nvml import NvmlBackend
    from app.core.policy.signals import GameSignal, ScriptedSignals
    from app.core.residency.ledger import Ledgers
    from app.core.settings import Settings

    target = Target(8 * GiB)
    targets.append(target)
    before = nvml_used(target.pid)
    assert before >= 8 * GiB
    settings = Settings(resume_cooldown_secs=2.0)
    backend = NvmlBackend()
    ledgers = Ledgers(settings.headroom_bytes)
    marks: dict[str, float] = {}  # each step's time, to explain where signal->frozen goes

    def timed_run(job: Any) -> Any:
        from concurrent.futures import Future

        future: Future[Any] = Future()
        marks.setdefault("job_started", time.monotonic())

        def work() -> None:
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the holder as the job's outcome
                future.set_exception(exc)
            marks.setdefault("job_done", time.monotonic())

        threading.Thread(target=work, daemon=True).start()
        return future

    holder = FreezeHolder(
        [FreezeRule("pytorch-target", "unused")],
        backend=backend,
        ledgers=ledgers,
        driver=lambda: driver,
        find=lambda rule: [target.pid],
        run=timed_run,
    )
    signals = ScriptedSignals()
    steward = Steward(settings, backend, [holder], signals=signals, ledgers=ledgers)
    stop = threading.Event()
    loop = threading.Thread(target=steward.run, args=(stop,), daemon=True)
    loop.start()
    try:
        assert wait_until(lambda: holder.pids() == {target.pid}, 20), "the holder never saw the target"
        signals.games = (GameSignal(name="bench game", source="gamemode", pid=None, started_at=0.0),)
        steward.wake()
        started = time.monotonic()
        assert wait_until(lambda: nvml_used(target.pid) <= 64 << 20, 120), "the process was not frozen"
        frozen_s = time.monotonic() - started
        steps = {k: round(v - started, 2) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}
        print(
            f"signal -> frozen in NVML {frozen_s:.2f} s for {before / GiB:.1f} GiB "
            f"({before / frozen_s / 1e9:.1f} GB/s); steps after the signal (s): {steps}"
        )
        snapshot = steward.snapshot
        assert snapshot is not None and [m.state for m in snapshot.models] == ["frozen"]
        signals.games = ()
        steward.wake()
        assert wait_until(lambda: nvml_used(target.pid) >= before - (64 << 20), 120), "not restored"
        assert target.digest() == target.first_digest, "its data after the restore is what it was"
        print(f"froze 8 GiB in {frozen_s:.1f} s")
    finally:
        stop.set()
        steward.wake()
        loop.join(60)


@pytest.mark.parametrize(
    "alloc_conf",
    [None, "expandable_segments:True", "backend:cudaMallocAsync"],
    ids=["default", "expandable", "async"],
)
def test_each_pytorch_allocator_survives_a_freeze_and_restore(
    driver: Any, targets: list[Target], alloc_conf: str | None
) -> None:
    target = Target(2 * GiB, alloc_conf)
    targets.append(target)
    driver.lock(target.pid, 10_000)
    driver.checkpoint(target.pid)
    assert nvml_used(target.pid) <= 64 << 20
    driver.restore(target.pid)
    driver.unlock(target.pid)
    assert target.digest() == target.first_digest


def test_twenty_cycles_never_leave_the_process_stuck(driver: Any, targets: list[Target]) -> None:
    from app.core.freeze.api import ProcessState

    target = Target(1 * GiB)
    targets.append(target)
    for _ in range(20):
        driver.lock(target.pid, 10_000)
        driver.checkpoint(target.pid)
        driver.restore(target.pid)
        driver.unlock(target.pid)
        assert driver.state(target.pid) == ProcessState.RUNNING
    assert target.digest() == target.first_digest


def test_a_process_that_exits_while_frozen_is_gone_cleanly(driver: Any, targets: list[Target]) -> None:
    target = Target(1 * GiB)
    driver.lock(target.pid, 10_000)
    driver.checkpoint(target.pid)
    target.stop()
    assert wait_until(lambda: nvml_used(target.pid) == 0, 30)
