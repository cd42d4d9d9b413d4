"""System sleep: logind's PrepareForSleep(true) before suspend/hibernate, PrepareForSleep(false) after resume,
on the SYSTEM bus. While watching we hold a logind "delay" inhibitor lock, so the system waits (up to
logind's InhibitDelayMaxSec, 5 s by default) until `before_sleep` has returned (models evicted); we take a
new lock after resume. No system bus or no logind: inert, nothing reported.

The callbacks run in a worker thread of the asyncio loop: `before_sleep` may block until the engine has
evicted (up to `before_sleep_timeout_s`); `after_resume` should return quickly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from app.core.aio_thread import AsyncioThread
from app.core.signals import dbus_calls

logger = logging.getLogger(__name__)

LOGIN1_NAME = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
LOGIN1_MANAGER = "org.freedesktop.login1.Manager"
_SLEEP_RULE = (
    f"type='signal',sender='{LOGIN1_NAME}',path='{LOGIN1_PATH}',"
    f"interface='{LOGIN1_MANAGER}',member='PrepareForSleep'"
)


class SleepWatcher(dbus_calls.BusWatcher):
    """Calls `before_sleep()` when the system is about to sleep and `after_resume()` when it woke up.

    `status`: "starting", "no_bus", "watching" or "closed". `holds_delay_lock` says whether logind will
    wait for us (False when logind refused the lock or is absent).
    """

    label = "sleep watcher"

    def __init__(
        self,
        aio: AsyncioThread,
        *,
        before_sleep: Callable[[], None],
        after_resume: Callable[[], None],
        bus_address: str | None = None,
        call_timeout_s: float = dbus_calls.DEFAULT_TIMEOUT_S,
        before_sleep_timeout_s: float = 4.0,
        autostart: bool = True,
    ) -> None:
        self.aio = aio
        self.before_sleep = before_sleep
        self.after_resume = after_resume
        self.bus_address = bus_address
        self.call_timeout_s = call_timeout_s
        self.before_sleep_timeout_s = before_sleep_timeout_s
        self.status = "starting"
        self._bus: MessageBus | None = None
        self._lock_fd: int | None = None
        self._started: concurrent.futures.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        if autostart:
            self.start()

    @property
    def holds_delay_lock(self) -> bool:
        return self._lock_fd is not None

    def _closed(self) -> None:
        self._release_lock()

    async def _start(self) -> None:
        address = self.bus_address or dbus_calls.system_bus_address()
        try:
            bus = await dbus_calls.connect(address, timeout_s=self.call_timeout_s, unix_fds=True)
            bus.add_message_handler(self._on_message)
            await dbus_calls.add_match(bus, _SLEEP_RULE)
        except (dbus_calls.BusUnavailable, dbus_calls.CallFailed) as exc:
            self.status = "no_bus"
            logger.info("sleep watcher inactive (%s): models are not evicted before system sleep", exc)
            return
        self._bus = bus
        self.status = "watching"
        await self._take_lock()

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.remove_message_handler(self._on_message)
            bus.disconnect()

    async def _take_lock(self) -> None:
        if self._bus is None or self._lock_fd is not None:
            return
        try:
            reply = await dbus_calls.call_for_reply(
                self._bus,
                destination=LOGIN1_NAME,
                path=LOGIN1_PATH,
                interface=LOGIN1_MANAGER,
                member="Inhibit",
                signature="ssss",
                body=["sleep", "VRAM Steward", "Free GPU memory before the system sleeps", "delay"],
                timeout_s=self.call_timeout_s,
            )
        except dbus_calls.CallFailed as exc:
            logger.info("no logind sleep delay lock (%s): eviction before sleep is best effort", exc)
            return
        fds = list(reply.unix_fds)
        index = reply.body[0] if reply.body else None
        if isinstance(index, int) and 0 <= index < len(fds):
            self._lock_fd = fds.pop(index)
        for fd in fds:  # anything else we were handed
            with contextlib.suppress(OSError):
                os.close(fd)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type != MessageType.SIGNAL
            or message.member != "PrepareForSleep"
            or message.interface != LOGIN1_MANAGER
        ):
            return
        going_to_sleep = bool(message.body[0])
        task = asyncio.get_running_loop().create_task(self._handle(going_to_sleep))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, going_to_sleep: bool) -> None:
        loop = asyncio.get_running_loop()
        callback = self.before_sleep if going_to_sleep else self.after_resume
        what = "before_sleep" if going_to_sleep else "after_resume"
        logger.info("system %s", "going to sleep" if going_to_sleep else "resumed")
        try:
            await asyncio.wait_for(loop.run_in_executor(None, callback), self.before_sleep_timeout_s)
        except TimeoutError:
            logger.warning("sleep watcher: %s took over %g s; not waiting", what, self.before_sleep_timeout_s)
        except Exception:
            logger.exception("sleep watcher: %s failed", what)
        if going_to_sleep:
            self._release_lock()  # logind may suspend now
        else:
            await self._take_lock()
