"""The router on a real asyncio thread with notifiers that record (no D-Bus here): coalescing on an
injected clock, the fallback order, timeouts, the settings switch, actions and their commands."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core import events as ev
from app.core.aio_thread import AsyncioThread
from app.core.config import AppRule, Settings, load_settings
from app.core.events import Event
from app.core.gpu.simulated import ManualClock
from app.core.notify.notifier import LogNotifier, NotificationRouter, add_ignore_rule, command_for_action
from app.core.policy.contention import Command
from tests.core.notify.conftest import RecordingNotifier


def refused(i: int) -> ev.LoadRefused:
    return ev.LoadRefused(
        at=float(i),
        model=f"model-{i}",
        gpu=0,
        reason="insufficient_vram",
        need_bytes=8 * 10**9,
        available_bytes=10**9,
    )


def evicted(trigger: str = "Cyberpunk 2077") -> ev.ModelsEvicted:
    exe = trigger.replace(" ", "").lower()
    return ev.ModelsEvicted(
        at=0, gpu=1, models=("m",), reason="game", trigger=trigger, freed_bytes=10**9, trigger_exe=exe
    )


def make_router(
    backends: list[RecordingNotifier | LogNotifier],
    aio: AsyncioThread,
    clock: Callable[[], float],
    actions: list[tuple[str, Event]] | None = None,
    **kw: float,
) -> NotificationRouter:
    def on_action(key: str, event: Event) -> None:
        if actions is None:
            raise RuntimeError("no actions expected")
        actions.append((key, event))

    return NotificationRouter(backends, aio=aio, clock=clock, on_action=on_action, **kw)  # type: ignore[arg-type]


def test_ten_events_in_one_second_make_two_notifications_the_second_saying_how_many_more(
    aio: AsyncioThread, clock: ManualClock
) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock, coalesce_s=10.0)
    for i in range(10):
        router.handle(refused(i))
        clock.advance(0.1)
    assert router.wait_idle(5)
    assert [t.title for t in shown.sent] == ["Could not load model-0: need 7.5 GiB, 953.7 MiB free"]
    clock.advance(8.9)  # 9.9 s after the first: the window is still open
    assert router.flush_due() == 0
    clock.advance(0.2)
    assert router.flush_due() == 1
    assert router.wait_idle(5)
    assert len(shown.sent) == 2
    assert shown.sent[1].title == "Could not load model-9: need 7.5 GiB, 953.7 MiB free (and 8 more)"
    assert shown.sent[1].burst_size == 9
    router.close()


def test_coalescing_is_per_kind(aio: AsyncioThread, clock: ManualClock) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock)
    router.handle(refused(1))
    router.handle(evicted())
    router.handle(ev.Resumed(at=0, gpu=0, models=("m",), after_s=30))
    router.handle(refused(2))  # held back: same kind within the window
    assert router.wait_idle(5)
    assert [t.coalesce_key for t in shown.sent] == ["LoadRefused", "ModelsEvicted", "Resumed"]
    router.close()


def test_a_held_back_burst_goes_out_by_itself_when_its_window_ends(aio: AsyncioThread) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, time.monotonic, coalesce_s=0.3)  # real time, a short window
    for i in range(5):
        router.handle(refused(i))
    deadline = time.monotonic() + 5
    while len(shown.sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [t.title.endswith("(and 3 more)") for t in shown.sent] == [False, True]
    router.close()


def test_after_the_window_a_new_event_goes_out_at_once(aio: AsyncioThread, clock: ManualClock) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock, coalesce_s=10.0)
    router.handle(refused(1))
    clock.advance(10.0)
    router.handle(refused(2))
    assert router.wait_idle(5)
    assert [t.title.split(":")[0] for t in shown.sent] == ["Could not load model-1", "Could not load model-2"]
    router.close()


def test_a_late_burst_goes_out_merged_with_the_next_event(aio: AsyncioThread, clock: ManualClock) -> None:
    """The loop's timer has not fired yet (a fake clock), and the next event comes after the window."""
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock, coalesce_s=10.0)
    router.handle(refused(1))
    router.handle(refused(2))
    clock.advance(11.0)
    router.handle(refused(3))
    assert router.wait_idle(5)
    assert [t.burst_size for t in shown.sent] == [1, 2]
    assert shown.sent[1].title.startswith("Could not load model-3") and "model-2" in shown.sent[1].body
    router.close()


def test_notifications_off_sends_nothing_and_can_be_turned_back_on(
    aio: AsyncioThread, clock: ManualClock
) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock, enabled=False)
    router.handle(evicted())
    assert router.wait_idle(5) and shown.sent == []
    router.apply_settings(Settings(notifications=True, notification_coalesce_secs=3.0))
    assert router.coalesce_s == 3.0
    router.handle(evicted())
    router.apply_settings(Settings(notifications=False))
    router.handle(ev.Resumed(at=0, gpu=0, models=("m",), after_s=1))
    assert router.wait_idle(5)
    assert [t.coalesce_key for t in shown.sent] == ["ModelsEvicted"]
    router.close()


def test_events_without_a_notification_reach_no_backend(aio: AsyncioThread, clock: ManualClock) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock)
    router.handle(ev.GameStarted(at=0, name="g", source="steam"))
    router.handle(ev.VramAllocated(at=0, model="m", gpu=0, bytes=1))
    assert router.wait_idle(5) and shown.sent == [] and not router.deliveries
    router.close()


@pytest.mark.parametrize("mode", ["unavailable", "refuse", "fail"])
def test_the_next_backend_takes_over_when_one_cannot(
    mode: str, aio: AsyncioThread, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = RecordingNotifier("desktop", mode), RecordingNotifier("balloon")
    router = make_router([first, second], aio, clock)
    with caplog.at_level(logging.DEBUG, logger="app.core.notify.notifier"):
        router.handle(evicted())
        assert router.wait_idle(5)
    assert first.sent == [] and len(second.sent) == 1
    assert [d.backend for d in router.deliveries] == ["balloon"]
    if mode == "fail":
        assert "the desktop notifier failed: ConnectionError: the server went away" in caplog.text
    router.close()


def test_a_hung_backend_times_out_falls_back_to_the_log_and_is_skipped_for_a_while(
    aio: AsyncioThread, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    hung = RecordingNotifier("desktop", "hang")
    router = make_router([hung, LogNotifier()], aio, clock, call_timeout_s=0.3, retry_after_s=60.0)
    caplog.set_level(logging.INFO, logger="app.core.notify.notifier")
    start = time.monotonic()
    router.handle(evicted())
    assert time.monotonic() - start < 0.1, "handle() must not wait for the server"
    assert router.wait_idle(5)
    took = time.monotonic() - start
    assert 0.25 <= took < 1.5, took
    assert "the desktop notifier did not answer within 0.3 s; skipping it for 60 s" in caplog.text
    assert "notification: Cyberpunk 2077 started: freed 953.7 MiB (1 model)" in caplog.text
    # while it rests, the next notification goes straight to the log
    start = time.monotonic()
    router.handle(ev.Resumed(at=0, gpu=0, models=("m",), after_s=1))
    assert router.wait_idle(5)
    assert time.monotonic() - start < 0.25
    assert [d.backend for d in router.deliveries] == ["log", "log"]
    # after the rest it is tried again (and times out again)
    clock.advance(61.0)
    router.handle(ev.GameWarning(at=0, gpu=0, name="g"))
    assert router.wait_idle(5)
    assert caplog.text.count("did not answer within") == 2
    router.close()


def test_the_tray_balloon_goes_before_the_log(aio: AsyncioThread, clock: ManualClock) -> None:
    desktop, log = RecordingNotifier("desktop", "unavailable"), LogNotifier()
    router = make_router([desktop, log], aio, clock)
    balloon = RecordingNotifier("tray-balloon")
    router.add_fallback(balloon)
    assert router.backend_names == ["desktop", "tray-balloon", "log"]
    router.handle(evicted())
    assert router.wait_idle(5) and len(balloon.sent) == 1
    router.close()
    assert balloon.closed and desktop.closed


def test_a_pressed_button_reaches_on_action_with_its_event(aio: AsyncioThread, clock: ManualClock) -> None:
    shown = RecordingNotifier("desktop")
    actions: list[tuple[str, Event]] = []
    router = make_router([shown], aio, clock, actions)
    event = evicted("Elden Ring")
    router.handle(event)
    assert router.wait_idle(5)
    text, on_action = shown.actions[0]
    on_action(text.actions[1].key)  # type: ignore[operator]
    assert actions == [("ignore_app:eldenring", event)]


def test_a_failing_action_handler_is_logged_not_raised(
    aio: AsyncioThread, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock, actions=None)  # its on_action raises
    router.handle(evicted())
    assert router.wait_idle(5)
    shown.actions[0][1]("resume")  # type: ignore[operator]
    assert "handling the notification action 'resume' failed" in caplog.text


def test_after_the_loop_stopped_a_notification_goes_to_the_log(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    aio = AsyncioThread()
    aio.start()
    router = make_router([RecordingNotifier("desktop")], aio, clock)
    aio.stop()
    caplog.set_level(logging.INFO, logger="app.core.notify.notifier")
    router.handle(evicted())
    assert "no asyncio loop" in caplog.text and "Cyberpunk 2077 started" in caplog.text
    router.close()


def test_close_drops_held_back_bursts_and_is_idempotent(
    aio: AsyncioThread, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    shown = RecordingNotifier("desktop")
    router = make_router([shown], aio, clock)
    router.handle(refused(1))
    router.handle(refused(2))
    caplog.set_level(logging.INFO, logger="app.core.notify.notifier")
    router.close()
    router.close()
    assert "1 held-back notification(s) dropped" in caplog.text
    router.handle(refused(3))
    clock.advance(100)
    assert router.flush_due() == 0
    assert len(shown.sent) == 1 and shown.closed


def test_a_router_needs_a_backend(aio: AsyncioThread, clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="at least one backend"):
        make_router([], aio, clock)


def test_buttons_map_to_engine_commands_on_the_event_gpu() -> None:
    assert command_for_action("resume", evicted()) == Command(kind="resume", gpu=1)
    assert command_for_action("evict_now", ev.GameWarning(at=0, gpu=2, name="g")) == Command(
        kind="evict_now", gpu=2
    )
    assert command_for_action("resume", ev.EngineError(at=0, where="x", message="y")) == Command(
        kind="resume"
    )
    assert command_for_action("show", evicted()) is None
    assert command_for_action("ignore_app:x", evicted()) is None


def test_always_ignore_saves_a_rule_in_the_settings_file_once(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('# mine\nauto_evict = false\n[[app_rules]]\nmatch = "blender"\naction = "evict"\n')
    settings = load_settings(path, check_files=False)
    new = add_ignore_rule(settings, "Cyberpunk 2077")
    assert new.app_rules == (AppRule("blender", "evict"), AppRule("Cyberpunk 2077", "ignore"))
    assert load_settings(path, check_files=False).app_rules == new.app_rules
    assert "# mine" in path.read_text() and new.auto_evict is False
    assert add_ignore_rule(new, "Cyberpunk 2077") is new
