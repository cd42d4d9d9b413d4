"""SleepWatcher against a stand-in logind on a private bus (real dbus-daemon, real fd passing)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from app.core.aio_thread import AsyncioThread
from app.core.signals.sleep import LOGIN1_MANAGER, LOGIN1_NAME, LOGIN1_PATH, SleepWatcher
from tests.fixtures.dbus_session import PrivateBus, wait_until


class FakeLogind:
    """Owns org.freedesktop.login1, answers Inhibit with the read end of a pipe, emits PrepareForSleep.
    The lock counts as held while any read end is open: writing to the pipe then works."""

    def __init__(self, address: str) -> None:
        self.aio = AsyncioThread(name="fake-logind")
        self.aio.start()
        self.inhibits: list[list[object]] = []
        self.pipes: list[tuple[int, int]] = []
        self.bus: MessageBus = self.aio.run(self._connect(address), timeout_s=5)

    async def _connect(self, address: str) -> MessageBus:
        bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
        bus.add_message_handler(self._on_message)
        await bus.request_name(LOGIN1_NAME)
        return bus

    def _on_message(self, message: Message) -> bool | None:
        if message.message_type != MessageType.METHOD_CALL or message.member != "Inhibit":
            return None
        self.inhibits.append(list(message.body))
        read_end, write_end = os.pipe()
        self.pipes.append((read_end, write_end))
        reply = Message.new_method_return(message, "h", [0], unix_fds=[read_end])
        self.bus.send(reply).add_done_callback(lambda _f: os.close(read_end))  # now only the client has it
        return True

    def lock_held(self, index: int = -1) -> bool:
        try:
            os.write(self.pipes[index][1], b"x")
        except BrokenPipeError:
            return False
        return True

    def prepare_for_sleep(self, going_to_sleep: bool) -> None:
        async def emit() -> None:
            await self.bus.send(
                Message.new_signal(LOGIN1_PATH, LOGIN1_MANAGER, "PrepareForSleep", "b", [going_to_sleep])
            )

        self.aio.run(emit(), timeout_s=5)

    def stop(self) -> None:
        self.aio.run(self._disconnect(), timeout_s=5)
        self.aio.stop()
        for _read, write in self.pipes:
            with contextlib.suppress(OSError):
                os.close(write)

    async def _disconnect(self) -> None:
        self.bus.disconnect()


@pytest.fixture
def logind(private_bus: PrivateBus) -> Iterator[FakeLogind]:
    fake = FakeLogind(private_bus.address)
    yield fake
    fake.stop()


def test_before_sleep_runs_while_logind_waits_for_us_and_the_lock_comes_back_after_resume(
    aio, private_bus: PrivateBus, logind: FakeLogind
) -> None:
    events: list[str] = []
    lock_during_callback: list[bool] = []
    resumed = threading.Event()

    def before_sleep() -> None:
        lock_during_callback.append(logind.lock_held(0))
        events.append("sleep")

    def after_resume() -> None:
        events.append("resume")
        resumed.set()

    watcher = SleepWatcher(
        aio, before_sleep=before_sleep, after_resume=after_resume, bus_address=private_bus.address
    )
    watcher.start().result(timeout=5)
    assert watcher.status == "watching"
    assert watcher.holds_delay_lock
    assert logind.inhibits == [["sleep", "VRAM Steward", "Free GPU memory before the system sleeps", "delay"]]
    assert logind.lock_held(0)

    logind.prepare_for_sleep(True)
    assert wait_until(lambda: not logind.lock_held(0)), "the delay lock was not released after before_sleep"
    assert events == ["sleep"]
    assert lock_during_callback == [True]  # logind was still waiting for us while we evicted

    logind.prepare_for_sleep(False)
    assert resumed.wait(5)
    assert wait_until(lambda: len(logind.inhibits) == 2 and watcher.holds_delay_lock)
    assert events == ["sleep", "resume"]
    assert logind.lock_held(1)

    watcher.close()
    assert not logind.lock_held(1)  # closing gives the lock back


def test_no_system_bus_leaves_the_watcher_inert(aio, tmp_path) -> None:
    called: list[str] = []
    watcher = SleepWatcher(
        aio,
        before_sleep=lambda: called.append("sleep"),
        after_resume=lambda: called.append("resume"),
        bus_address=f"unix:path={tmp_path}/no-system-bus",
    )
    watcher.start().result(timeout=5)
    assert watcher.status == "no_bus"
    assert not watcher.holds_delay_lock
    watcher.close()
    assert called == []


def test_a_bus_without_logind_still_watches_but_holds_no_lock(aio, private_bus: PrivateBus) -> None:
    watcher = SleepWatcher(
        aio, before_sleep=lambda: None, after_resume=lambda: None, bus_address=private_bus.address
    )
    watcher.start().result(timeout=5)
    assert watcher.status == "watching"
    assert not watcher.holds_delay_lock
    watcher.close()
