"""Desktop notifications when things are not fine: no server on the bus, no bus at all, a server that never
answers, a server without buttons, a server that comes later. Real desktop-notifier and dbus-fast on a
private bus, with a small real notification server (tests/fixtures/notify_desktop.py); no X needed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import events as ev
from app.core.aio_thread import AsyncioThread
from app.core.events import Event
from app.core.gpu.simulated import ManualClock
from app.core.notify.notifier import DesktopNotifierBackend, LogNotifier, NotificationRouter
from tests.fixtures.dbus_session import PrivateBus, wait_until
from tests.fixtures.notify_desktop import FakeNotificationServer

TIMEOUT_S = 0.5


@pytest.fixture
def actions() -> list[tuple[str, Event]]:
    return []


@pytest.fixture
def router(
    aio: AsyncioThread, clock: ManualClock, actions: list[tuple[str, Event]]
) -> Iterator[NotificationRouter]:
    router = NotificationRouter(
        [DesktopNotifierBackend(call_timeout_s=TIMEOUT_S), LogNotifier()],
        aio=aio,
        clock=clock,
        on_action=lambda key, event: actions.append((key, event)),
        call_timeout_s=TIMEOUT_S,
        coalesce_s=0.0,  # every event its own notification here
    )
    yield router
    router.close()


@pytest.fixture
def server(private_bus: PrivateBus) -> Iterator[FakeNotificationServer]:
    srv = FakeNotificationServer(private_bus.address).start()
    yield srv
    srv.stop()


def warning(name: str = "Doom") -> ev.GameWarning:
    return ev.GameWarning(at=0, gpu=0, name=name)


def test_no_server_on_the_bus_falls_back_to_the_log_without_blocking(
    private_bus: PrivateBus, router: NotificationRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.core.notify.notifier")
    start = time.monotonic()
    router.handle(warning())
    assert time.monotonic() - start < 0.1
    assert router.wait_idle(5)
    assert time.monotonic() - start < 1.0  # the bus daemon answers NameHasOwner at once
    assert [d.backend for d in router.deliveries] == ["log"]
    assert "notification: Doom started: it may lack VRAM" in caplog.text
    assert "Notification failed" not in caplog.text  # desktop-notifier was never asked to try


def test_no_session_bus_at_all_falls_back_to_the_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    router: NotificationRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus-here'}")
    caplog.set_level(logging.INFO, logger="app.core.notify.notifier")
    router.handle(warning())
    router.handle(warning("Quake"))
    assert router.wait_idle(5)
    assert [d.backend for d in router.deliveries] == ["log", "log"]
    assert caplog.text.count("no D-Bus session bus for desktop notifications") == 1  # said once, not per call


def test_a_hung_server_times_out_and_the_app_goes_on(
    private_bus: PrivateBus, router: NotificationRouter, caplog: pytest.LogCaptureFixture
) -> None:
    hung = FakeNotificationServer(private_bus.address, hang=True).start()
    try:
        caplog.set_level(logging.INFO, logger="app.core.notify.notifier")
        start = time.monotonic()
        router.handle(warning())
        assert time.monotonic() - start < 0.1, "handle() must hand over, never wait on D-Bus"
        assert router.wait_idle(5)
        took = time.monotonic() - start
        assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 1.0, took
        assert hung.hung_calls >= 1 and hung.received == []
        assert f"the desktop notifier did not answer within {TIMEOUT_S:g} s" in caplog.text
        assert [d.backend for d in router.deliveries] == ["log"]
        start = time.monotonic()  # the hung server is skipped for a while: no second wait
        router.handle(warning("Quake"))
        assert router.wait_idle(5)
        assert time.monotonic() - start < 0.3
        assert [d.backend for d in router.deliveries] == ["log", "log"]
    finally:
        hung.stop()


def test_buttons_go_only_to_servers_that_support_actions(
    private_bus: PrivateBus, router: NotificationRouter
) -> None:
    plain = FakeNotificationServer(private_bus.address, capabilities=("body",)).start()
    try:
        router.handle(warning())
        assert router.wait_idle(5) and plain.wait_for(1)
        assert plain.received[0]["summary"] == "Doom started: it may lack VRAM"
        assert "Free now" not in plain.received[0]["actions"].values()
    finally:
        plain.stop()


def test_a_button_pressed_on_the_server_reaches_on_action(
    server: FakeNotificationServer, router: NotificationRouter, actions: list[tuple[str, Event]]
) -> None:
    event = warning()
    router.handle(event)
    assert router.wait_idle(5) and server.wait_for(1)
    got = server.received[0]
    assert got["app_name"] == "VRAM Steward" and got["hints"]["urgency"] == 1
    assert sorted(got["actions"].values()) == ["", "Free now", "Open dashboard"]  # "" is the click action
    free_now = next(k for k, label in got["actions"].items() if label == "Free now")
    server.press(got["id"], free_now)
    assert wait_until(lambda: bool(actions), 5)
    server.press(got["id"], "default")  # the notification was used up by the first press: ignored
    time.sleep(0.2)
    assert actions == [("evict_now", event)]


def test_a_click_on_the_notification_asks_for_the_dashboard(
    server: FakeNotificationServer, router: NotificationRouter, actions: list[tuple[str, Event]]
) -> None:
    router.handle(ev.GpuLost(at=0, gpu=0, message="fell off the bus"))
    assert router.wait_idle(5) and server.wait_for(1)
    assert server.received[0]["hints"]["urgency"] == 2  # critical
    server.press(server.received[0]["id"], "default")
    assert wait_until(lambda: bool(actions), 5)
    assert [key for key, _ in actions] == ["show"]


def test_a_server_that_starts_later_is_used_from_then_on(
    private_bus: PrivateBus, router: NotificationRouter
) -> None:
    router.handle(warning())
    assert router.wait_idle(5)
    late = FakeNotificationServer(private_bus.address).start()
    try:
        router.handle(warning("Quake"))
        assert router.wait_idle(5) and late.wait_for(1)
        assert [d.backend for d in router.deliveries] == ["log", "desktop"]
        assert late.received[0]["summary"] == "Quake started: it may lack VRAM"
    finally:
        late.stop()
