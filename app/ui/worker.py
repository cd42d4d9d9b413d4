"""The engine's worker thread in the GUI: a QObject moved to a QThread owns the `Steward` and ticks it on a
QTimer at the pace the engine asks for (`snapshot.next_poll_s`).

Snapshots and every core `Event` cross to the GUI thread as queued signals (a notifier subscribes to
`event`); commands and new settings go the other way. Exceptions never escape into Qt: a failed tick becomes
an `EngineError` event plus the `error` signal, and the timer keeps going.

Shutdown is ordered (STYLE.md 6): stop the timer, `steward.shutdown()` (releases all VRAM, ends the hosts),
then the services the runtime started (API, asyncio loop), then quit the thread and wait.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal, Slot

from app.core import events as ev
from app.core.settings import Settings

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.02  # never spin: even a policy that asks for 0 s waits this long
ERROR_INTERVAL_S = 1.0  # after a failed tick


class Engine(Protocol):
    """What the worker needs from `app.core.engine.steward.Steward`."""

    def step(self) -> Any: ...

    def submit(self, command: Any) -> concurrent.futures.Future[Any]: ...

    def subscribe(self, on_event: Callable[[ev.Event], None]) -> None: ...

    def update_settings(self, settings: Settings) -> None: ...

    def shutdown(self) -> None: ...


def make_command(kind: str, model: str | None = None, gpu: int | None = None) -> Any:
    """A `Command` for the engine (built here so widgets never import the policy module)."""
    from app.core.policy.contention import Command

    return Command(kind=kind, model=model, gpu=gpu)  # type: ignore[arg-type]


class _TickLoop(QObject):
    """Lives in the engine's thread: ticks the Steward on a single-shot QTimer, applies settings, stops."""

    snapshot = Signal(object)
    engine_event = Signal(object)
    error = Signal(str)
    stopped = Signal()

    def __init__(self, steward: Engine, clock: Callable[[], float]) -> None:
        super().__init__()
        self.steward = steward
        self.clock = clock
        self.timer: QTimer | None = None
        self.stopping = False
        self.ticks = 0
        self.last: Any = None
        steward.subscribe(self.publish)  # the engine calls this on its own (this) thread

    def publish(self, event: ev.Event) -> None:
        self.engine_event.emit(event)

    @Slot()
    def start(self) -> None:
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.tick_now)
        self.tick_now()

    @Slot()
    def tick_now(self) -> None:
        if self.stopping:
            return
        interval = ERROR_INTERVAL_S
        try:
            snapshot = self.steward.step()
            self.ticks += 1
            interval = float(getattr(snapshot, "next_poll_s", 1.0))
            if snapshot is not self.last:  # a still step hands back the same snapshot: nothing to redraw
                self.last = snapshot
                self.snapshot.emit(snapshot)
        except Exception as exc:
            logger.exception("engine tick failed")
            message = f"{type(exc).__name__}: {exc}"
            self.engine_event.emit(
                ev.EngineError(at=self.clock(), wall_time=time.time(), where="tick", message=message),
            )
            self.error.emit(f"The engine failed a tick: {message}")
        if self.timer is not None and not self.stopping:
            self.timer.start(max(int(max(interval, MIN_INTERVAL_S) * 1000), 1))

    @Slot(object)
    def apply_settings(self, settings: Settings) -> None:
        try:
            self.steward.update_settings(settings)
        except Exception as exc:
            logger.exception("applying settings failed")
            self.error.emit(f"Could not apply the new settings: {exc}")
        self.tick_now()

    @Slot()
    def stop(self) -> None:
        self.stopping = True
        if self.timer is not None:
            self.timer.stop()
        self.shutdown_engine()
        self.stopped.emit()
        thread = QThread.currentThread()
        app = QCoreApplication.instance()
        if app is not None:  # hand this object (and its stopped timer) back, so it is freed there
            self.moveToThread(app.thread())
        thread.quit()

    def shutdown_engine(self) -> None:
        try:
            self.steward.shutdown()
        except Exception as exc:
            logger.exception("engine shutdown failed")
            self.error.emit(f"Releasing VRAM failed: {exc}")


class StewardWorker(QObject):
    """The GUI thread's handle on the engine thread. Create, `start_in_thread()`, stop with `stop_and_wait()`.

    Its public signals are emitted on the GUI thread (relayed from the engine thread), so any slot or plain
    function connected to them, a notifier's included, runs on the GUI thread.
    """

    snapshot = Signal(object)  # StewardSnapshot, after every tick
    engine_event = Signal(object)  # every core Event, as the engine publishes it
    error = Signal(str)  # a failed tick or command, in words
    stopped = Signal()  # after the engine released its VRAM

    _wake = Signal()  # -> engine thread: tick now (a command is waiting)
    _settings_in = Signal(object)
    _stop_requested = Signal()

    def __init__(
        self,
        steward: Engine,
        *,
        stop_services: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._steward = steward
        self._stop_services = stop_services
        self._thread: QThread | None = None
        self._loop = _TickLoop(steward, clock)
        for theirs, ours in (
            (self._loop.snapshot, self.snapshot),
            (self._loop.engine_event, self.engine_event),
            (self._loop.error, self.error),
            (self._loop.stopped, self.stopped),
        ):
            theirs.connect(ours)  # signal to signal: queued onto this object's (the GUI) thread
        self._wake.connect(self._loop.tick_now)
        self._settings_in.connect(self._loop.apply_settings)
        self._stop_requested.connect(self._loop.stop)

    @property
    def ticks(self) -> int:
        return self._loop.ticks

    def start_in_thread(self) -> QThread:
        thread = QThread()
        thread.setObjectName("steward")
        self._loop.moveToThread(thread)
        thread.started.connect(self._loop.start)
        self._thread = thread
        thread.start()
        return thread

    def submit(self, kind: str, model: str | None = None, gpu: int | None = None) -> None:
        """Queue a command (thread-safe) and wake the engine so it is handled now, not at the next poll."""
        try:
            future = self._steward.submit(make_command(kind, model, gpu))
        except Exception as exc:
            logger.exception("could not queue %s", kind)
            self.error.emit(f"Could not {kind.replace('_', ' ')}: {exc}")
            return

        def done(f: concurrent.futures.Future[Any]) -> None:
            self._command_done(kind, f)

        future.add_done_callback(done)
        self._wake.emit()

    def request_tick(self) -> None:
        """Tick as soon as the engine thread is free."""
        self._wake.emit()

    def apply_settings(self, settings: Settings) -> None:
        """Hand new settings to the engine on its own thread."""
        self._settings_in.emit(settings)

    def stop_and_wait(self, timeout_s: float = 10.0) -> bool:
        """Ordered shutdown: the engine releases VRAM on its thread, then the API and the loop stop, then the
        thread ends. True when it ended within the timeout."""
        thread = self._thread
        finished = True
        if thread is None or not thread.isRunning():
            self._loop.stopping = True
            self._loop.shutdown_engine()
        else:
            self._stop_requested.emit()
            finished = bool(thread.wait(int(timeout_s * 1000)))
            if not finished:
                logger.warning("the engine thread did not stop within %.0f s", timeout_s)
        if self._stop_services is not None:
            try:
                self._stop_services()
            except Exception:
                logger.exception("stopping the API and the asyncio loop failed")
        return finished

    def _command_done(self, kind: str, future: concurrent.futures.Future[Any]) -> None:
        """Runs on the engine thread when the command's tick is over; emitting from there is queued."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._loop.error.emit(f"Could not {kind.replace('_', ' ')}: {exc}")


def runtime_services_stopper(runtime: Any) -> Callable[[], None]:
    """The parts of `Runtime.stop()` that follow the engine's own shutdown: the API, then the asyncio loop."""

    def stop() -> None:
        api, aio = getattr(runtime, "api", None), getattr(runtime, "aio", None)
        if api is not None and aio is not None:
            try:
                aio.run(api.stop(), timeout_s=5.0)
            except Exception:
                logger.exception("stopping the API failed")
        if aio is not None:
            aio.stop(timeout_s=5.0)

    return stop
