"""How long a command sent through the API takes, in the daemon and in the tray app (CPU; no GPU needed).

Runs the real engine on the simulated GPU with the real API on loopback, and sends N commands
(`POST /v1/show`, which goes through the engine's door and changes nothing) at random moments, measuring the
HTTP round trip, for:
  * daemon: `Runtime.start_worker()` (a plain thread running `Steward.run`);
  * tray: the tray app's `StewardWorker` under Qt (QT_QPA_PLATFORM=offscreen), a QThread running the same
    `Steward.run`, with the Qt event loop running in the main thread as in the app;
  * reference, measured in the same run: the tray loop of 2026-11 (a QTimer on the engine's QThread that
    called `step()` at `next_poll_s`, reproduced below as it was), where a command waited for the next timer.
The scenario is `desktop-idle` plus one model resident (poll 100 ms) and then nothing resident (poll 2 s).

    QT_QPA_PLATFORM=offscreen python3 bench/command_latency_bench.py --out results.json [--n 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from app.core.config import Settings
from app.core.wiring import Runtime, build_runtime


def post(runtime: Runtime, path: str) -> float:
    assert runtime.api is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{runtime.api.bound_port}{path}",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {runtime.api.token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.perf_counter()
    with opener.open(request, timeout=10) as answer:
        answer.read()
    return time.perf_counter() - started


def measure(runtime: Runtime, n: int, seed: int) -> dict[str, float]:
    """N commands at random moments (0-250 ms apart), so they land anywhere in the loop's wait."""
    rng = random.Random(seed)
    deadline = time.monotonic() + 10
    while runtime.steward.snapshot is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    waits = []
    for _ in range(n):
        time.sleep(rng.uniform(0.0, 0.25))
        waits.append(post(runtime, "/v1/show"))
    waits.sort()
    # the engine's door alone (no HTTP): submit from this thread, wait for the outcome
    from app.core.policy.actions import Command

    door = []
    for _ in range(n):
        time.sleep(rng.uniform(0.0, 0.25))
        started = time.perf_counter()
        runtime.steward.submit(Command(kind="show")).result(timeout=10)
        door.append(time.perf_counter() - started)
    door.sort()
    return {
        "n": n,
        "p50_ms": 1000 * statistics.median(waits),
        "p95_ms": 1000 * waits[int(0.95 * (n - 1))],
        "max_ms": 1000 * waits[-1],
        "door_p50_ms": 1000 * statistics.median(door),
        "door_p95_ms": 1000 * door[int(0.95 * (n - 1))],
    }


def new_runtime(scenario: str, tmp: Path) -> Runtime:
    os.environ["VRAM_STEWARD_STATE_DIR"] = str(tmp / "state")
    os.environ["VRAM_STEWARD_RUNTIME_DIR"] = str(tmp / "run")
    return build_runtime(Settings(api_port=0), simulate=scenario, with_api=True, audit=False)


def run_daemon(scenario: str, n: int, tmp: Path) -> dict[str, float]:
    runtime = new_runtime(scenario, tmp)
    runtime.start_worker()
    try:
        return measure(runtime, n, seed=1)
    finally:
        runtime.stop()


def run_qt(scenario: str, n: int, tmp: Path, *, old_loop: bool) -> dict[str, float]:
    from PySide6.QtCore import QCoreApplication, QMetaObject, Qt

    from app.ui.worker import StewardWorker, runtime_services_stopper

    app = QCoreApplication.instance() or QCoreApplication(sys.argv[:1])
    runtime = new_runtime(scenario, tmp)
    result: dict[str, Any] = {}
    if old_loop:
        worker: Any = OldTickLoopWorker(runtime.steward)
    else:
        worker = StewardWorker(runtime.steward, stop_services=runtime_services_stopper(runtime))
    worker.start_in_thread()

    def client() -> None:
        try:
            result.update(measure(runtime, n, seed=1))
        finally:
            QMetaObject.invokeMethod(app, "quit", Qt.ConnectionType.QueuedConnection)

    threading.Thread(target=client, daemon=True).start()
    app.exec()  # the GUI thread's event loop, as in the tray app
    worker.stop_and_wait(timeout_s=10)
    if old_loop:
        runtime_services_stopper(runtime)()
    return result


class OldTickLoopWorker:
    """The reference: the tray's engine loop before 2026-12 (app/ui/worker.py `_TickLoop`), reduced to what
    decides a command's wait: a single-shot QTimer on the engine's QThread calls `steward.step()` and starts
    again after `next_poll_s`. `Steward.submit` sets the engine's wake event, which this loop never read."""

    def __init__(self, steward: Any) -> None:
        from PySide6.QtCore import QObject, QThread, QTimer, Slot

        class Loop(QObject):
            def __init__(self) -> None:
                super().__init__()
                self.timer: QTimer | None = None
                self.stopping = False

            @Slot()
            def start(self) -> None:
                self.timer = QTimer(self)
                self.timer.setSingleShot(True)
                self.timer.timeout.connect(self.tick)
                self.tick()

            @Slot()
            def tick(self) -> None:
                if self.stopping:
                    return
                snapshot = steward.step()
                assert self.timer is not None
                self.timer.start(max(int(max(snapshot.next_poll_s, 0.02) * 1000), 1))

            @Slot()
            def stop(self) -> None:
                self.stopping = True
                if self.timer is not None:
                    self.timer.stop()
                QThread.currentThread().quit()

        self.steward = steward
        self.thread = QThread()
        self.loop = Loop()
        self.loop.moveToThread(self.thread)
        self.thread.started.connect(self.loop.start)

    def start_in_thread(self) -> None:
        self.thread.start()

    def stop_and_wait(self, timeout_s: float) -> None:
        from PySide6.QtCore import QMetaObject, Qt

        QMetaObject.invokeMethod(self.loop, "stop", Qt.ConnectionType.QueuedConnection)
        self.thread.wait(int(timeout_s * 1000))
        self.steward.shutdown()


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "n": args.n}
    try:
        import PySide6  # noqa: F401
    except ImportError:  # the GPU machine has no Qt: the daemon's loop only
        with_qt = False
        print("PySide6 is not installed here: measuring the daemon's loop only")
    else:
        with_qt = True
    for scenario, label in (("game-launch", "holding a model (poll 100 ms)"), ("desktop-idle", "idle (2 s)")):
        with tempfile.TemporaryDirectory() as tmp:
            rows = {"daemon": run_daemon(scenario, args.n, Path(tmp) / "d")}
            if with_qt:
                rows["tray"] = run_qt(scenario, args.n, Path(tmp) / "t", old_loop=False)
                rows["tray_before"] = run_qt(scenario, args.n, Path(tmp) / "o", old_loop=True)
        results[scenario] = rows
        print(f"\n{scenario}: {label}", flush=True)
        for name, row in rows.items():
            p50, p95, top = row["p50_ms"], row["p95_ms"], row["max_ms"]
            door = f"door alone p50 {row['door_p50_ms']:6.2f} ms p95 {row['door_p95_ms']:6.2f} ms"
            print(f"  {name:12s} API p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  max {top:7.2f} ms; {door}")
        if with_qt:
            ratio = rows["tray_before"]["p95_ms"] / max(rows["tray"]["p95_ms"], 1e-9)
            same = rows["tray"]["p95_ms"] / max(rows["daemon"]["p95_ms"], 1e-9)
            print(f"  tray p95: {ratio:.0f}x faster than before; tray/daemon p95 ratio {same:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
