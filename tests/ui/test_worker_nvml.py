"""The tray's worker runs exactly the engine loop the daemon runs (`Steward.run`), on the REAL nvidia-ml-py
against the stand-in libnvidia-ml.so.1, and a game signal or a command wakes it as fast as the daemon's.

The GPU benchmark (bench/reaction_bench.py) measures that loop on an H200; the GPU machine has no Qt, so this
is the proof that the tray app's reaction is the benchmarked one."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import pytest

from app.core.engine.steward import Steward
from app.core.gpu.nvml import NvmlBackend
from app.core.policy.contention import Command
from app.core.policy.signals import GameSignal, ScriptedSignals
from app.core.settings import Settings
from app.core.units import GiB, MiB
from app.ui.worker import StewardWorker
from tests.fixtures.fake_nvml import FakeNvml, gpu_line, proc_line

GAME = GameSignal(name="Cyberpunk 2077", source="gamemode", pid=4242, started_at=0.0)


def desktop(fake: FakeNvml) -> None:
    fake.write(
        gpu_line(
            0, name="NVIDIA_RTX_4090", uuid="GPU-cccc", total=24 * GiB, reserved=300 * MiB, used=320 * MiB
        )
        + proc_line(1201, 200 * MiB, kind="graphics", name="Xorg")
        + proc_line(1650, 120 * MiB, kind="graphics", name="gnome-shell")
    )


def new_engine() -> tuple[Steward, ScriptedSignals]:
    signals = ScriptedSignals()
    # idle: the loop waits its 2 s idle interval unless something wakes it
    return Steward(Settings(), NvmlBackend(), [], signals=signals, autoload=False), signals


def wake_latencies(steward: Steward, signals: ScriptedSignals) -> list[float]:
    """Raise and drop a game signal (what GameMode's watcher does: set, then wake) and time until the
    published snapshot shows it; then the same for a command through the door."""
    out: list[float] = []
    deadline = time.monotonic() + 5
    while steward.snapshot is None and time.monotonic() < deadline:
        time.sleep(0.005)
    for trial in range(8):
        time.sleep(0.05 + 0.03 * trial)  # at varying points of the 2 s wait
        started = time.perf_counter()
        signals.games = () if trial % 2 else (GAME,)
        steward.wake()
        want = not trial % 2
        while steward.snapshot is None or bool(steward.snapshot.games) != want:
            if time.perf_counter() - started > 3:
                pytest.fail("the loop did not wake for the game signal")
            time.sleep(0.0005)
        out.append(time.perf_counter() - started)
        started = time.perf_counter()
        steward.submit(Command(kind="show")).result(timeout=3)
        out.append(time.perf_counter() - started)
    return out


def test_the_tray_worker_runs_the_daemons_loop_and_wakes_as_fast(
    qtbot: Any, fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    desktop(fake_nvml)
    ran_on: list[str] = []
    real_run = Steward.run

    def spy(self: Steward, stop: threading.Event, **kwargs: Any) -> None:
        ran_on.append(threading.current_thread().name)
        real_run(self, stop, **kwargs)

    monkeypatch.setattr(Steward, "run", spy)

    # the daemon: a plain thread running Steward.run (Runtime.start_worker)
    daemon_engine, daemon_signals = new_engine()
    stop = threading.Event()
    thread = threading.Thread(target=daemon_engine.run, args=(stop,), name="steward")
    thread.start()
    try:
        daemon = wake_latencies(daemon_engine, daemon_signals)
    finally:
        stop.set()
        daemon_engine.wake()
        thread.join(5)

    # the tray: the StewardWorker's QThread, the Qt event loop running in this (the GUI) thread
    tray_engine, tray_signals = new_engine()
    worker = StewardWorker(tray_engine)
    shown: list[Any] = []
    worker.snapshot.connect(shown.append)
    worker.start_in_thread()
    try:
        tray: list[float] = []
        done = threading.Event()

        def measure() -> None:
            tray.extend(wake_latencies(tray_engine, tray_signals))
            done.set()

        threading.Thread(target=measure, daemon=True).start()
        qtbot.waitUntil(done.is_set, timeout=20000)
        qtbot.waitUntil(lambda: bool(shown), timeout=2000)  # snapshots reach the GUI thread
    finally:
        assert worker.stop_and_wait(timeout_s=5)

    assert len(ran_on) == 2 and ran_on[0] == "steward" and ran_on[1] != threading.main_thread().name
    # both loops wake at once (ms), far from the 2 s idle wait a timer-driven loop would add
    assert max(daemon) < 1.0 and max(tray) < 1.0, (daemon, tray)
    assert statistics.median(tray) < max(5 * statistics.median(daemon), 0.05), (daemon, tray)
