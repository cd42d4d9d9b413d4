"""Fixtures for the game-signal tests: a running AsyncioThread, a private session bus, the real gamemoded,
and real processes with chosen names."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.aio_thread import AsyncioThread
from app.core.gpu.simulated import ManualClock
from tests.fixtures.dbus_session import GameModeDaemon, PrivateBus, start_named_process, start_private_bus


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def aio() -> Iterator[AsyncioThread]:
    thread = AsyncioThread(name="test-asyncio")
    thread.start()
    yield thread
    assert thread.stop(timeout_s=5.0), "the asyncio thread did not stop"


@pytest.fixture
def private_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    """A private session bus with no service activation; DBUS_SESSION_BUS_ADDRESS points at it."""
    bus = start_private_bus(tmp_path)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
    yield bus
    bus.stop()


@pytest.fixture
def gamemode_daemon(private_bus: PrivateBus, tmp_path: Path) -> Iterator[GameModeDaemon]:
    """The real gamemoded, not yet started (tests start it when they need it)."""
    if not GameModeDaemon.installed():
        pytest.skip("gamemoded is not installed (Debian: apt-get install gamemode-daemon)")
    daemon = GameModeDaemon(private_bus, tmp_path)
    yield daemon
    daemon.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """spawn(name, *args): a real process named `name` (a copy of /bin/sleep); ended after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def _spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = start_named_process(tmp_path, name, *args)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(5)
