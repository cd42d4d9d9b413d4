"""Real notifications on a real desktop: desktop-notifier → a private D-Bus bus → dunst on Xvfb. What dunst
showed is read back with `dunstctl history`; buttons are pressed with `dunstctl context`, as a user would.
One Xvfb + bus + dunst serves the whole module."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app.core import events as ev
from app.core.aio_thread import AsyncioThread
from app.core.config import Settings
from app.core.events import Event
from app.core.gpu.simulated import ManualClock
from app.core.notify.notifier import (
    DesktopNotifierBackend,
    LogNotifier,
    NotificationRouter,
    attach_notifications,
)
from app.core.policy.contention import Command
from app.core.wiring import build_runtime
from tests.core.notify.conftest import Desktop
from tests.fixtures.dbus_session import wait_until


@pytest.fixture
def actions() -> list[tuple[str, Event]]:
    return []


@pytest.fixture
def router(
    desktop: Desktop, aio: AsyncioThread, clock: ManualClock, actions: list[tuple[str, Event]]
) -> Iterator[NotificationRouter]:
    desktop.dunst.ctl("close-all")  # each test starts with nothing on screen
    router = NotificationRouter(
        [DesktopNotifierBackend(call_timeout_s=3.0), LogNotifier()],
        aio=aio,
        clock=clock,
        on_action=lambda key, event: actions.append((key, event)),
    )
    yield router
    router.close()


def shown(desktop: Desktop, containing: str) -> list[dict[str, str]]:
    return [n for n in desktop.dunst.history() if containing in n["summary"] + n["body"]]


def test_a_game_eviction_arrives_at_dunst_with_its_words(
    desktop: Desktop, router: NotificationRouter
) -> None:
    router.handle(
        ev.ModelsEvicted(
            at=0,
            gpu=0,
            models=("llama-8b", "qwen-14b"),
            reason="game",
            trigger="Cyberpunk 2077",
            freed_bytes=14_200_000_000,
        )
    )
    assert router.wait_idle(5)
    assert [d.backend for d in router.deliveries] == ["desktop"]
    assert shown(desktop, "qwen-14b") == [
        {
            "appname": "VRAM Steward",
            "summary": "Cyberpunk 2077 started: freed 13.2 GiB (2 models)",
            "body": "llama-8b, qwen-14b left GPU 0. They come back when the game ends.",
        }
    ]


def test_pressing_resume_now_in_dunst_calls_on_action_resume(
    desktop: Desktop, router: NotificationRouter, actions: list[tuple[str, Event]]
) -> None:
    event = ev.ModelsEvicted(
        at=0,
        gpu=0,
        models=("press-me",),
        reason="game",
        trigger="Hades",
        freed_bytes=10**9,
        trigger_exe="hades",
    )
    router.handle(event)
    assert router.wait_idle(5)
    assert wait_until(lambda: desktop.dunst.displayed() >= 1, 5)
    desktop.dunst.press("#Resume now (Hades started")
    assert wait_until(lambda: bool(actions), 5), "the button press never came back"
    assert actions == [("resume", event)]
    offered = desktop.dunst.dmenu_log.read_text()
    assert "#Always ignore this app (Hades started" in offered and "#Open dashboard (Hades started" in offered


def test_free_now_on_a_game_warning_calls_on_action_evict_now(
    desktop: Desktop, router: NotificationRouter, actions: list[tuple[str, Event]]
) -> None:
    event = ev.GameWarning(at=0, gpu=0, name="Stardew Valley")
    router.handle(event)
    assert router.wait_idle(5)
    assert wait_until(lambda: desktop.dunst.displayed() >= 1, 5)
    desktop.dunst.press("#Free now (Stardew Valley started")
    assert wait_until(lambda: bool(actions), 5)
    assert actions == [("evict_now", event)]


def test_ten_events_in_one_second_reach_dunst_as_two_notifications(
    desktop: Desktop, router: NotificationRouter, clock: ManualClock
) -> None:
    for i in range(10):
        router.handle(
            ev.LoadRefused(
                at=0,
                model=f"burst-{i}",
                gpu=0,
                reason="insufficient_vram",
                need_bytes=4 * 10**9,
                available_bytes=0,
            )
        )
        clock.advance(0.1)
    assert router.wait_idle(5)
    assert len(shown(desktop, "burst-")) == 1
    clock.advance(router.coalesce_s)
    assert router.flush_due() == 1
    assert router.wait_idle(5)
    summaries = [n["summary"] for n in shown(desktop, "burst-")]
    assert summaries == [
        "Could not load burst-0: need 3.7 GiB, 0 B free",
        "Could not load burst-9: need 3.7 GiB, 0 B free (and 8 more)",
    ]


def test_with_notifications_off_dunst_gets_nothing(desktop: Desktop, router: NotificationRouter) -> None:
    router.apply_settings(Settings(notifications=False))
    router.handle(ev.GameWarning(at=0, gpu=0, name="Quiet Game"))
    assert router.wait_idle(5)
    time.sleep(0.3)  # anything sent would have arrived by now
    assert shown(desktop, "Quiet Game") == [] and not router.deliveries


def test_the_daemon_notifies_when_the_scenario_game_starts_and_resume_now_reaches_the_engine(
    desktop: Desktop,
) -> None:
    """attach_notifications on a simulated daemon (game-launch: GameMode registers Cyberpunk 2077 at 20 s)."""
    clock = ManualClock()
    runtime = build_runtime(Settings(), simulate="game-launch", clock=clock, with_api=False, audit=False)
    router = attach_notifications(runtime)
    assert router is not None and runtime.aio is not None and runtime.aio.running
    submitted: list[Command] = []
    real_submit = runtime.steward.submit
    runtime.steward.submit = lambda command: (submitted.append(command), real_submit(command))[1]  # type: ignore[method-assign]
    try:
        while clock.now_s < 25 and not router.deliveries:
            runtime.steward.tick()
            clock.advance(0.1)
            router.wait_idle(5)
        assert [d.text.title for d in router.deliveries] == [
            "Cyberpunk 2077 started: freed 8.0 GiB (1 model)"
        ]
        assert router.deliveries[0].backend == "desktop"
        assert wait_until(lambda: desktop.dunst.displayed() >= 1, 5)
        desktop.dunst.press("#Resume now (Cyberpunk 2077 started")
        assert wait_until(lambda: bool(submitted), 5)
        assert submitted == [Command(kind="resume", gpu=0)]
        assert (
            shown(desktop, "freed 8.0 GiB")[0]["summary"] == "Cyberpunk 2077 started: freed 8.0 GiB (1 model)"
        )
    finally:
        router.close()
        runtime.stop()
    assert not runtime.aio.running


def test_attach_notifications_does_nothing_when_they_are_off() -> None:
    runtime = build_runtime(
        Settings(notifications=False),
        simulate="desktop-idle",
        clock=ManualClock(),
        with_api=False,
        audit=False,
    )
    try:
        assert attach_notifications(runtime) is None
        assert runtime.aio is None
    finally:
        runtime.stop()
