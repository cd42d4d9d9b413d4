"""Fixtures for the notification tests: a running AsyncioThread, a hand-moved clock, notifiers that record
what they were given, a private D-Bus bus per test, and one real desktop (Xvfb + private bus + dunst) per
test module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.aio_thread import AsyncioThread
from app.core.gpu.simulated import ManualClock
from app.core.notify.text import NotificationText
from tests.fixtures.dbus_session import PrivateBus, start_private_bus
from tests.fixtures.notify_desktop import Dunst, Xvfb, missing_binaries, start_xvfb


class RecordingNotifier:
    """A notifier that keeps what it was given; `mode` makes it unavailable, refuse, fail or hang."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode  # ok | unavailable | refuse | fail | hang
        self.sent: list[NotificationText] = []
        self.actions: list[tuple[NotificationText, object]] = []
        self.closed = False

    async def available(self) -> bool:
        return self.mode != "unavailable"

    async def send(self, text: NotificationText, on_action: object) -> bool:
        if self.mode == "hang":
            await asyncio.Event().wait()  # never set: a server that never answers
        if self.mode == "fail":
            raise ConnectionError("the server went away")
        if self.mode == "refuse":
            return False
        self.sent.append(text)
        self.actions.append((text, on_action))
        return True

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def aio() -> Iterator[AsyncioThread]:
    thread = AsyncioThread(name="notify-test-asyncio")
    thread.start()
    yield thread
    thread.stop(timeout_s=5.0)


@pytest.fixture
def private_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    """A private session bus with no notification server (and no activation); the test's env uses it."""
    if missing := missing_binaries("dbus-daemon", "dbus-send"):
        pytest.skip(f"not installed: {', '.join(missing)} (Debian: apt-get install dbus)")
    bus = start_private_bus(tmp_path)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
    yield bus
    bus.stop()


@dataclass
class Desktop:
    bus: PrivateBus
    xvfb: Xvfb
    dunst: Dunst


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    """Xvfb + a private session bus + real dunst, once per module; the env points at them meanwhile."""
    if missing := missing_binaries("Xvfb", "dbus-daemon", "dbus-send", "dunst", "dunstctl"):
        pytest.skip(f"not installed: {', '.join(missing)} (Debian: apt-get install xvfb dbus dunst)")
    workdir = tmp_path_factory.mktemp("desktop")
    bus = start_private_bus(workdir)
    xvfb = start_xvfb()
    dunst = Dunst(bus, xvfb.display, workdir)
    env = pytest.MonkeyPatch()
    try:
        dunst.start()
        env.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
        env.setenv("DISPLAY", xvfb.display)
        yield Desktop(bus=bus, xvfb=xvfb, dunst=dunst)
    finally:
        env.undo()
        dunst.stop()
        xvfb.stop()
        bus.stop()
    assert os.environ.get("DBUS_SESSION_BUS_ADDRESS") != bus.address
