"""The whole freezing path with no GPU: the engine's loop, the freezing holder, the real ctypes driver layer
against the stand-in libcuda.so.1, and the real nvidia-ml-py against the stand-in NVML, where the frozen
process's memory leaves and comes back."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from app.core import events as ev
from app.core.engine.steward import Steward
from app.core.freeze.holder import FreezeHolder, FreezeRule
from app.core.gpu.nvml import NvmlBackend
from app.core.policy.signals import GameSignal, ScriptedSignals
from app.core.residency.ledger import Ledgers
from app.core.settings import Settings
from app.core.units import GiB
from tests.fixtures.fake_cuda import FakeCuda, pid_line
from tests.fixtures.fake_nvml import FakeNvml, gpu_line, proc_line

TOTAL = 24 * GiB
GAME = GameSignal(name="Cyberpunk 2077", source="gamemode", pid=None, started_at=0.0)


@pytest.fixture
def app_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def until(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_game_freezes_the_app_through_the_driver_and_the_cooldown_restores_it(
    fake_nvml: FakeNvml, fake_cuda: FakeCuda, app_process: subprocess.Popen[bytes]
) -> None:
    pid = app_process.pid
    fake_nvml.write(gpu_line(0, name="RTX_4090", total=TOTAL, used=9 * GiB) + proc_line(pid, 8 * GiB))
    fake_cuda.write(pid_line(pid, live=1))
    backend = NvmlBackend()
    settings = Settings(resume_cooldown_secs=0.5)
    ledgers = Ledgers(settings.headroom_bytes)
    holder = FreezeHolder(
        [FreezeRule("ComfyUI", "ComfyUI/main.py")],
        backend=backend,
        ledgers=ledgers,
        driver=fake_cuda.open_driver,
        find=lambda rule: [pid],
        refresh_s=0.2,
    )
    signals = ScriptedSignals()
    steward = Steward(settings, backend, [holder], signals=signals, ledgers=ledgers, autoload=False)
    events: list[ev.Event] = []
    steward.subscribe(events.append)
    stop = threading.Event()
    loop = threading.Thread(target=steward.run, args=(stop,), daemon=True)
    loop.start()

    def held_by_app() -> int:
        gpu = backend.sample().gpu(0)
        return sum(p.used_bytes or 0 for p in gpu.processes if p.pid == pid) if gpu else -1

    def app_state() -> str | None:
        snap = steward.snapshot
        return next((str(m.state) for m in snap.models if m.name == "ComfyUI"), None) if snap else None

    try:
        assert until(lambda: app_state() == "resident"), app_state()
        signals.games = (GAME,)
        steward.wake()
        assert until(lambda: held_by_app() == 0), "the process's VRAM left the GPU"
        assert until(lambda: app_state() == "frozen")
        assert fake_cuda.calls("cuCheckpointProcessCheckpoint") == 1
        signals.games = ()
        steward.wake()
        assert until(lambda: held_by_app() == 8 * GiB), "restored after the cooldown"
        assert until(lambda: app_state() == "resident")
        assert fake_cuda.calls("cuCheckpointProcessRestore") == 1
        assert fake_cuda.calls("cuCheckpointProcessUnlock") == 1
        frozen = [e for e in events if isinstance(e, ev.VramDeallocated) and e.reason == "frozen"]
        assert len(frozen) == 1 and frozen[0].bytes == 8 * GiB
    finally:
        stop.set()
        steward.wake()
        loop.join(30)
        backend.close()
