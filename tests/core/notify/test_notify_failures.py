"""No silent failure (issue 16): a notification that reaches no one but the log is a failure, logged and
kept as the router's `problem` (the tray and dashboard show it) until one is shown again."""

from __future__ import annotations

import logging

import pytest

from app.core import events as ev
from app.core.aio_thread import AsyncioThread
from app.core.gpu.simulated import ManualClock
from app.core.notify.notifier import LogNotifier, NotificationRouter
from tests.core.notify.conftest import RecordingNotifier

GAME = ev.ModelsEvicted(
    at=0, gpu=0, models=("m",), reason="game", trigger="Hades", freed_bytes=10**9, trigger_exe="hades"
)


def router(
    backends: list[RecordingNotifier | LogNotifier], aio: AsyncioThread, clock: ManualClock
) -> NotificationRouter:
    def no_action(key: str, event: ev.Event) -> None:
        raise AssertionError("no button is pressed here")

    return NotificationRouter(backends, aio=aio, clock=clock, on_action=no_action, coalesce_s=0.0)  # type: ignore[arg-type]


def test_a_notification_only_the_log_got_is_a_failure_logged_and_kept_until_one_is_shown(
    aio: AsyncioThread, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    desktop, balloon = RecordingNotifier("desktop", "unavailable"), RecordingNotifier("tray-balloon", "fail")
    notifications = router([desktop, balloon, LogNotifier()], aio, clock)
    seen: list[str | None] = []
    notifications.subscribe_problem(seen.append)
    with caplog.at_level(logging.WARNING, logger="app.core.notify.notifier"):
        notifications.handle(GAME)
        assert notifications.wait_idle(5)
    assert notifications.problem is not None
    assert "desktop: not available" in notifications.problem
    assert "tray-balloon: ConnectionError: the server went away" in notifications.problem
    assert notifications.failed == 1 and seen == [notifications.problem]
    assert any(
        "notification not shown" in r.getMessage() and "Hades started" in r.getMessage()
        for r in caplog.records
    )
    assert [d.backend for d in notifications.deliveries] == ["log"]

    desktop.mode = "ok"  # the server is back: the next one is shown, and the problem is over
    clock.advance(1.0)
    notifications.handle(GAME)
    assert notifications.wait_idle(5)
    assert notifications.problem is None and seen[-1] is None and len(desktop.sent) == 1
    notifications.close()


def test_a_router_with_only_the_log_by_design_reports_no_problem(
    aio: AsyncioThread, clock: ManualClock
) -> None:
    notifications = router([LogNotifier()], aio, clock)
    notifications.handle(GAME)
    assert notifications.wait_idle(5)
    assert notifications.problem is None and notifications.failed == 0
    notifications.close()
