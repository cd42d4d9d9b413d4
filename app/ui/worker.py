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

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from app.core import events as ev
from app.core.config import Settings

logger = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.02  # never spin: even a policy that asks for 0 s waits this long
ERROR_INTERVAL_S = 1.0  # after a failed tick


class Engine(Protocol):
    """What the worker needs from `app.core.steward.Steward`."""

    def tick(self) -> Any: ...

    def submit(self, command: Any) -> concurrent.futures.Future[Any]: ...

    def subscribe(self, on_event: Callable[[ev.Event], None]) -> None: ...

    def update_settings(self, settings: Settings) -> None: ...

    def shutdown(self) -> None: ...


def make_command(kind: str, model: str | None = None, gpu: int | None = None) -> Any:
    """A `Command` for the engine (built here so widgets never import the policy module)."""
    from app.core.policy.contention import Command

    return Command(kind=kind, model=model, gpu=gpu)  # type: ignore[arg-type]


class StewardWorker(QObject):
    """Lives in its own QThread. Create, then `start_in_thread()`; stop with `stop_and_wait()`."""

    snapshot = Signal(object)  # StewardSnapshot, after every tick
    event = Signal(object)  # every core Event, as the engine publishes it
    error = Signal(str)  # a failed tick or command, in words
    stopped = Signal()  # after the engine released its VRAM

    _wake = Signal()  # GUI thread -> worker thread: tick now (a command is waiting)
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
        self._clock = clock
        self._timer: QTimer | None = None
        self._stopping = False
        self._thread: QThread | None = None
        self.ticks = 0
        steward.subscribe(self._on_engine_event)  # runs on the worker thread; signals queue it to the GUI
        self._wake.connect(self._tick_now)
        self._settings_in.connect(self._apply_settings)
        self._stop_requested.connect(self._stop)

    # --- GUI thread ----------------------------------------------------------------------------

    def start_in_thread(self) -> QThread:
        thread = QThread()
        thread.setObjectName("steward")
        self.moveToThread(thread)
        thread.started.connect(self._start)
        self._thread = thread
        thread.start()
        return thread

    def submit(self, kind: str, model: str | None = None, gpu: int | None = None) -> None:
        """Queue a command (thread-safe) and wake the worker so it is handled at once, not at the next poll."""
        try:
            future = self._steward.submit(make_command(kind, model, gpu))
        except Exception as exc:
            logger.exception("could not queue %s", kind)
            self.error.emit(f"Could not {kind.replace('_', ' ')}: {exc}")
            return
        future.add_done_callback(lambda f, k=kind: self._command_done(k, f))
        self._wake.emit()

    def request_tick(self) -> None:
        """Tick as soon as the worker thread is free (thread-safe)."""
        self._wake.emit()

    def apply_settings(self, settings: Settings) -> None:
        """Hand new settings to the engine on its own thread."""
        self._settings_in.emit(settings)

    def stop_and_wait(self, timeout_s: float = 10.0) -> bool:
        """Ordered shutdown from the GUI thread. True when the thread ended within the timeout."""
        thread = self._thread
        if thread is None or not thread.isRunning():
            self._shutdown_engine()
            self._stop_other_services()
            return True
        self._stop_requested.emit()
        finished = thread.wait(int(timeout_s * 1000))
        if not finished:
            logger.warning("the engine thread did not stop within %.0f s", timeout_s)
        self._stop_other_services()
        return bool(finished)

    # --- worker thread -------------------------------------------------------------------------

    @Slot()
    def _start(self) -> None:
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._tick_now)
        self._tick_now()

    @Slot()
    def _tick_now(self) -> None:
        if self._stopping:
            return
        interval = ERROR_INTERVAL_S
        try:
            snapshot = self._steward.tick()
            self.ticks += 1
            interval = float(getattr(snapshot, "next_poll_s", 1.0))
            self.snapshot.emit(snapshot)
        except Exception as exc:
            logger.exception("engine tick failed")
            message = f"{type(exc).__name__}: {exc}"
            self.event.emit(ev.EngineError(at=self._clock(), wall_time=time.time(), where="tick", message=message))
            self.error.emit(f"The engine failed a tick: {message}")
        if self._timer is not None and not self._stopping:
            self._timer.start(max(int(max(interval, MIN_INTERVAL_S) * 1000), 1))

    @Slot(object)
    def _apply_settings(self, settings: Settings) -> None:
        try:
            self._steward.update_settings(settings)
        except Exception as exc:
            logger.exception("applying settings failed")
            self.error.emit(f"Could not apply the new settings: {exc}")
        self._tick_now()

    @Slot()
    def _stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.stop()
        self._shutdown_engine()
        self.stopped.emit()
        thread = QThread.currentThread()
        thread.quit()

    def _shutdown_engine(self) -> None:
        try:
            self._steward.shutdown()
        except Exception as exc:
            logger.exception("engine shutdown failed")
            self.error.emit(f"Releasing VRAM failed: {exc}")

    def _stop_other_services(self) -> None:
        if self._stop_services is None:
            return
        try:
            self._stop_services()
        except Exception:
            logger.exception("stopping the API and the asyncio loop failed")

    def _on_engine_event(self, event: ev.Event) -> None:
        self.event.emit(event)

    def _command_done(self, kind: str, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.error.emit(f"Could not {kind.replace('_', ' ')}: {exc}")


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
