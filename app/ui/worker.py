"""The engine's worker thread in the GUI: a QThread that runs the engine's one loop, `Steward.run`, exactly as
the daemon's plain thread does. The tray app never ticks the engine itself.

Snapshots and every core `Event` cross to the GUI thread as queued signals (a notifier subscribes to
`engine_event`); commands and new settings go the other way through the engine's one door
(`Steward.submit`), which wakes the loop at once. Exceptions never escape into Qt: the loop turns a failed
tick into an `EngineError` event, and a refused or failed command becomes the `error` signal.

Shutdown is ordered (STYLE.md 6): the loop stops and `steward.shutdown()` releases all VRAM on the engine
thread, then the services the runtime started (API, asyncio loop) stop, then the thread ends.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from PySide6.QtCore import QObject, QThread, Signal

from app.core import events as ev
from app.core.settings import Settings

logger = logging.getLogger(__name__)


class Engine(Protocol):
    """What the worker needs from `app.core.engine.steward.Steward`."""

    def run(self, stop: threading.Event) -> None: ...

    def submit(self, command: Any) -> concurrent.futures.Future[Any]: ...

    def subscribe(self, on_event: Callable[[ev.Event], None]) -> None: ...

    def subscribe_snapshots(self, on_snapshot: Callable[[Any], None]) -> None: ...

    def wake(self) -> None: ...

    def shutdown(self) -> None: ...


def make_command(kind: str, model: str | None = None, gpu: int | None = None) -> Any:
    """A `Command` for the engine (built here so widgets never import the policy module)."""
    from app.core.policy.actions import Command

    return Command(kind=kind, model=model, gpu=gpu)  # type: ignore[arg-type]


def settings_command(settings: Settings) -> Any:
    from app.core.engine.commands import ApplySettings

    return ApplySettings(settings)


class _LoopThread(QThread):
    """Runs `Steward.run` (the loop the daemon runs) until `stop` is set; relays what it publishes."""

    snapshot = Signal(object)
    engine_event = Signal(object)

    def __init__(self, steward: Engine, stop: threading.Event) -> None:
        super().__init__()
        self.setObjectName("steward")
        self.steward = steward
        self.stop = stop
        self.ticks = 0
        self._last: Any = None
        steward.subscribe(self.engine_event.emit)  # called on the engine thread: queued to the GUI
        steward.subscribe_snapshots(self._on_snapshot)

    def _on_snapshot(self, snapshot: Any) -> None:
        self.ticks += 1
        if snapshot is not self._last:  # a still step hands back the same snapshot: nothing to redraw
            self._last = snapshot
            self.snapshot.emit(snapshot)

    def run(self) -> None:
        try:
            self.steward.run(self.stop)
        except Exception:  # run() shuts down in order itself; never let anything escape into Qt
            logger.exception("the engine loop ended with an error")


class StewardWorker(QObject):
    """The GUI thread's handle on the engine thread. Create, `start_in_thread()`, stop with `stop_and_wait()`.

    Its public signals are emitted on the GUI thread (relayed from the engine thread), so any slot or plain
    function connected to them, a notifier's included, runs on the GUI thread.
    """

    snapshot = Signal(object)  # StewardSnapshot, after every tick that changed it
    engine_event = Signal(object)  # every core Event, as the engine publishes it
    error = Signal(str)  # a refused or failed command, in words
    stopped = Signal()  # after the engine released its VRAM

    _error_from_engine = Signal(str)

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
        self._stop = threading.Event()
        self._thread = _LoopThread(steward, self._stop)
        self._thread.snapshot.connect(self.snapshot)
        self._thread.engine_event.connect(self.engine_event)
        self._error_from_engine.connect(self.error)  # queued: emitted from the engine thread
        self._started = False

    @property
    def ticks(self) -> int:
        """Snapshots the engine published (still steps included)."""
        return self._thread.ticks

    def start_in_thread(self) -> QThread:
        self._started = True
        self._thread.start()
        return self._thread

    def submit(
        self, kind: str, model: str | None = None, gpu: int | None = None
    ) -> concurrent.futures.Future[Any] | None:
        """Send a command through the engine's door (which wakes the loop at once). A refusal or failure
        arrives as the `error` signal; the future is returned for callers that want the outcome."""
        return self.submit_command(make_command(kind, model, gpu), kind.replace("_", " "))

    def apply_settings(self, settings: Settings) -> concurrent.futures.Future[Any] | None:
        """New settings, applied on the engine thread to every part that reads them."""
        return self.submit_command(settings_command(settings), "apply the new settings")

    def submit_command(self, command: Any, what: str) -> concurrent.futures.Future[Any] | None:
        try:
            future = self._steward.submit(command)
        except Exception as exc:
            logger.exception("could not queue %s", what)
            self.error.emit(f"Could not {what}: {exc}")
            return None

        def done(f: concurrent.futures.Future[Any]) -> None:  # on the engine thread
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                self._error_from_engine.emit(f"Could not {what}: {exc}")

        future.add_done_callback(done)
        return future

    def request_tick(self) -> None:
        """Tick as soon as the engine thread is free."""
        self._steward.wake()

    def stop_and_wait(self, timeout_s: float = 10.0) -> bool:
        """Ordered shutdown: the engine releases VRAM on its thread, then the API and the loop stop, then the
        thread ends. True when it ended within the timeout."""
        finished = True
        self._stop.set()
        self._steward.wake()
        if not self._started or not self._thread.isRunning():
            try:
                self._steward.shutdown()  # idempotent; releases VRAM when the loop never ran
            except Exception as exc:
                logger.exception("engine shutdown failed")
                self.error.emit(f"Releasing VRAM failed: {exc}")
        else:
            finished = bool(self._thread.wait(int(timeout_s * 1000)))
            if not finished:
                logger.warning("the engine thread did not stop within %.0f s", timeout_s)
        self.stopped.emit()
        if self._stop_services is not None:
            try:
                self._stop_services()
            except Exception:
                logger.exception("stopping the API and the asyncio loop failed")
        return finished


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
