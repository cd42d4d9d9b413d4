"""One asyncio event loop in a daemon thread, for I/O that is asynchronous by nature (D-Bus for GameMode,
logind and notifications; later the HTTP API).

Other threads hand it coroutines with `submit()` (fire and forget, or keep the Future) or `run()` (wait for
the result, never longer than `timeout_s`). Every D-Bus call made on this loop carries its own timeout as
well, so a hung bus peer can never freeze the engine or the GUI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncioThread:
    """An asyncio loop running in its own daemon thread. Start once, stop once (ordered shutdown)."""

    def __init__(self, name: str = "vram-steward-asyncio") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop itself, for code that already runs on it (e.g. to create a dbus-fast MessageBus)."""
        if self._loop is None:
            raise RuntimeError(f"{self.name}: the asyncio thread has not been started")
        return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> None:
        """Start the thread and wait until its loop runs. Calling it again while running does nothing."""
        with self._lock:
            if self._thread is not None:
                if self._stopping:
                    raise RuntimeError(f"{self.name}: an AsyncioThread cannot be restarted after stop()")
                return
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(_log_loop_exception)
            self._loop = loop
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()
        self._started.wait()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop from any thread; the Future can be waited on or cancelled."""
        if not self.running or self._loop is None:
            coro.close()  # no "coroutine was never awaited" warning
            raise RuntimeError(f"{self.name}: the asyncio thread is not running (start() it first)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run `coro` on the loop and wait for its result from another thread.

        Raises TimeoutError after `timeout_s` (and cancels the coroutine); re-raises what the coroutine
        raised. Never call it from the loop's own thread: that would wait on itself.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(f"{self.name}: run() called from the loop's own thread; await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: no result within {timeout_s:g} s") from None

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Cancel every task, let them finish their cleanup, close the loop and join the thread.

        Returns True when the thread ended within `timeout_s`. Safe to call twice or before start().
        """
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return True
            self._stopping = True
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):  # already closed
                loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is thread:
            return False  # called from a task on the loop: the loop stops once this task yields
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("%s: the asyncio thread did not end within %g s", self.name, timeout_s)
            return False
        return True

    def _main(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.call_soon(self._started.set)
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                logger.exception("%s: error while shutting the asyncio loop down", self.name)
            finally:
                loop.close()
                logger.debug("%s: asyncio loop closed", self.name)


_CANCEL_GRACE_S = 2.0  # how long cancelled tasks get to run their cleanup (finally blocks)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    _done, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=_CANCEL_GRACE_S))
    for task in pending:
        logger.warning("asyncio task %r ignored cancellation; abandoning it", task.get_name())
    for task in _done:
        if not task.cancelled() and task.exception() is not None:
            logger.warning("asyncio task %r failed: %r", task.get_name(), task.exception())


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    logger.error("asyncio: %s", context.get("message", "unhandled error"), exc_info=exc)
