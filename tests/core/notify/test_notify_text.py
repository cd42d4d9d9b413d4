"""The words of notifications: which events make one, titles with numbers, buttons, the log path."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core import events as ev
from app.core.notify.text import (
    NotificationText,
    Urgency,
    format_duration,
    merge_burst,
    notification_for,
    rule_match,
)
from app.core.units import GiB


def evicted(
    reason: str = "game",
    trigger: str = "Cyberpunk 2077",
    freed: int | None = 14_200_000_000,
    exe: str | None = "cyberpunk2077",
    app_id: str | None = None,
) -> ev.ModelsEvicted:
    return ev.ModelsEvicted(
        at=1.0,
        gpu=0,
        models=("llama-8b", "qwen-14b"),
        reason=reason,
        trigger=trigger,
        freed_bytes=freed,
        trigger_exe=exe,
        trigger_app_id=app_id,
    )


def keys(text: NotificationText) -> list[str]:
    return [a.key for a in text.actions]


def test_a_game_eviction_says_what_was_freed_and_offers_resume_and_ignore() -> None:
    text = notification_for(evicted())
    assert text is not None
    assert text.title == "Cyberpunk 2077 started: freed 13.2 GiB (2 models)"  # 14.2e9 bytes, in binary units
    assert "llama-8b, qwen-14b" in text.body and "GPU 0" in text.body
    assert keys(text) == ["resume", "ignore_app:cyberpunk2077", "show"]  # the executable, not the title
    assert [a.label for a in text.actions] == ["Resume now", "Always ignore this app", "Open dashboard"]
    assert text.coalesce_key == "ModelsEvicted" and text.default_action == "show"


def test_an_eviction_whose_size_is_unknown_still_reads_well() -> None:
    text = notification_for(evicted(freed=None, reason="pressure", trigger="blender", exe="blender"))
    assert text is not None
    assert text.title == "blender needs VRAM: freed VRAM (2 models)"
    assert "ignore_app:blender" in keys(text)


def test_always_ignore_names_the_app_as_a_rule_matches_it_never_the_text() -> None:
    """Issue 16: rules from identities. A Steam game by its AppId; a pressure trigger by its executable,
    never "Cyberpunk2077.exe (pid 4242) grew 1.2 GiB"; no identity, no button (a display name matches
    nothing)."""
    steam = notification_for(evicted(exe="cyberpunk2077", app_id="1091500"))
    assert steam is not None and "ignore_app:steam:1091500" in keys(steam)
    grew = "Cyberpunk2077.exe (pid 4242) grew 1.2 GiB"
    pressure = notification_for(evicted(reason="pressure", trigger=grew, exe="cyberpunk2077"))
    assert pressure is not None and "ignore_app:cyberpunk2077" in keys(pressure)
    assert not any(grew in key for key in keys(pressure))
    unknown = notification_for(evicted(exe=None))
    assert unknown is not None and keys(unknown) == ["resume", "show"]
    assert rule_match("/games/Cyberpunk2077.exe", None) == "cyberpunk2077"
    assert rule_match(None, None) is None


def test_a_saved_rule_is_confirmed_with_undo() -> None:
    text = notification_for(
        ev.AppRuleAdded(at=0, match="cyberpunk2077", action="ignore", name="Cyberpunk 2077")
    )
    assert text is not None
    assert text.title == "Cyberpunk 2077 will be ignored"
    assert 'match = "cyberpunk2077"' in text.body
    assert next((a.label, a.key) for a in text.actions) == ("Undo", "remove_rule:cyberpunk2077")
    assert text.urgency is not Urgency.CRITICAL
    assert notification_for(ev.AppRuleRemoved(at=0, match="cyberpunk2077", action="ignore")) is None


def test_a_known_lasting_condition_is_not_a_sticky_critical_notification() -> None:
    text = notification_for(ev.BackendProblem(at=0, state="no_driver", message="NVIDIA driver not found"))
    assert text is not None and text.urgency is Urgency.NORMAL


@pytest.mark.parametrize("reason", ["user", "pause", "sleep", "lost"])
def test_evictions_the_user_caused_or_another_notification_covers_are_quiet(reason: str) -> None:
    assert notification_for(evicted(reason=reason)) is None


def test_thermal_and_battery_evictions_offer_resume_but_not_ignore() -> None:
    hot = notification_for(evicted(reason="thermal", trigger="87 °C"))
    battery = notification_for(evicted(reason="battery", trigger="battery"))
    assert hot is not None and hot.title.startswith("GPU 0 too hot: freed 13.2 GiB")
    assert battery is not None and battery.title.startswith("On battery: freed 13.2 GiB")
    assert keys(hot) == keys(battery) == ["resume", "show"]


def test_resumed_says_the_gpu_is_free_and_how_long_models_were_out() -> None:
    text = notification_for(ev.Resumed(at=0, gpu=1, models=("llama-8b",), after_s=185.0))
    assert text is not None
    assert text.title == "GPU free again: models reloaded"
    assert "llama-8b on GPU 1" in text.body and "3 min" in text.body
    assert text.urgency is Urgency.LOW


def test_a_refused_load_gives_need_and_free_in_gib() -> None:
    event = ev.LoadRefused(
        at=0,
        model="llama-70b",
        gpu=0,
        reason="insufficient_vram",
        need_bytes=40 * 10**9,
        available_bytes=9 * 10**9,
    )
    text = notification_for(event)
    assert text is not None
    assert text.title == "Could not load llama-70b: need 37.3 GiB, 8.4 GiB free"
    assert "smaller" in text.body


def test_a_refused_load_without_numbers_names_the_reason() -> None:
    text = notification_for(ev.LoadRefused(at=0, model="m", gpu=2, reason="dedicated"))
    assert text is not None
    assert text.title == "Could not load m" and "Dedicated mode" in text.body and "GPU 2" in text.body


def test_a_game_with_auto_pause_off_warns_and_offers_free_now() -> None:
    text = notification_for(ev.GameWarning(at=0, gpu=0, name="Elden Ring"))
    assert text is not None
    assert text.title == "Elden Ring started: it may lack VRAM"
    assert keys(text) == ["evict_now", "show"] and text.actions[0].label == "Free now"
    # never "your models stay" and then pressure frees them: it says what happens if the game needs VRAM
    assert "If the game needs their VRAM, they are freed then" in text.body


def test_a_frozen_app_says_what_moved_to_ram_and_how_to_thaw() -> None:
    text = notification_for(
        ev.VramDeallocated(at=0, model="ComfyUI", gpu=0, bytes=12 * 2**30 + 2**29, reason="frozen")
    )
    assert text is not None
    assert text.title == "ComfyUI frozen: 12.5 GiB moved to RAM"
    assert "vram-steward thaw" in text.body


@pytest.mark.parametrize(
    "event, title",
    [
        (ev.GpuLost(at=0, gpu=0, message="fell off the bus"), "GPU 0 lost"),
        (ev.EngineError(at=0, where="tick", message="boom"), "VRAM Steward hit an internal error"),
        (ev.HostDied(at=0, gpu=1, pid=7, exit_code=-9, models=("a",)), "Model host on GPU 1 stopped"),
        (
            ev.SealVerificationFailed(at=0, model="a", gpu=0, damaged_chunks=(3, 9), chunk_size_bytes=GiB),
            "a failed verification",
        ),
        (
            ev.VramAllocationFailed(at=0, model="a", gpu=0, bytes=GiB, reason="cuda_allocation_failed"),
            "Loading a failed",
        ),
    ],
)
def test_errors_are_critical_and_say_where_the_log_is(event: ev.Event, title: str, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "vram-steward.log"
    text = notification_for(event, log_path=log)
    assert text is not None
    assert text.title == title
    assert text.urgency is Urgency.CRITICAL
    assert f"Details in the log: {log}" in text.body


def test_the_log_path_defaults_to_the_platform_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_LOG_DIR", str(tmp_path / "where-logs-go"))
    text = notification_for(ev.GpuLost(at=0, gpu=0, message="x"))
    assert text is not None
    assert str(tmp_path / "where-logs-go" / "vram-steward.log") in text.body


@pytest.mark.parametrize(
    "event",
    [
        ev.VramAllocated(at=0, model="a", gpu=0, bytes=1),
        ev.GameStarted(at=0, name="g", source="steam"),
        ev.GameEnded(at=0, name="g", source="steam"),
        ev.Paused(at=0),
        ev.LoadProgress(at=0, model="a", gpu=0, done_bytes=1, total_bytes=2),
        ev.VramSealed(at=0, model="a", gpu=0, bytes=1, digest="d" * 64, seconds=1.0, bytes_per_s=1.0),
        ev.VramAllocationFailed(at=0, model="a", gpu=0, bytes=1, reason="insufficient_vram"),
    ],
)
def test_routine_events_make_no_notification(event: ev.Event) -> None:
    assert notification_for(event) is None


def test_a_model_whose_file_changed_is_reported() -> None:
    event = ev.VramSealed(
        at=0,
        model="a",
        gpu=0,
        bytes=1,
        digest="abcdef0123456789" * 4,
        seconds=1.0,
        bytes_per_s=1.0,
        file_changed=True,
    )
    text = notification_for(event)
    assert text is not None and text.title == "a loaded: its file changed" and "abcdef012345" in text.body


def test_a_burst_becomes_the_latest_notification_saying_how_many_more() -> None:
    texts = [NotificationText(title=f"event {i}", body=f"body {i}", coalesce_key="K") for i in range(10)]
    merged = merge_burst(texts)
    assert merged.title == "event 9 (and 9 more)"
    assert merged.body.startswith("body 9\nAlso:")
    assert "• event 6\n• event 7\n• event 8" in merged.body and "event 5" not in merged.body
    assert merged.body.endswith("…and 6 earlier")
    assert merged.burst_size == 10
    again = merge_burst([merged, NotificationText(title="event 10", body="b", coalesce_key="K")])
    assert again.title == "event 10 (and 10 more)" and again.burst_size == 11


def test_a_burst_of_one_is_unchanged_and_an_empty_one_is_an_error() -> None:
    one = NotificationText(title="t", body="b", coalesce_key="K")
    assert merge_burst([one]) is one
    with pytest.raises(ValueError, match="at least one"):
        merge_burst([])


@pytest.mark.parametrize(
    "seconds, words",
    [(0, "0 s"), (44.6, "45 s"), (60, "1 min"), (185, "3 min"), (3900, "1 h 5 min"), (7200, "2 h")],
)
def test_durations_read_like_people_say_them(seconds: float, words: str) -> None:
    assert format_duration(seconds) == words


def test_pressure_from_one_app_offers_rules_about_its_executable() -> None:
    """Rules match the executable, never the notification's text ("blender (pid 77) grew 3.1 GiB")."""
    event = ev.ModelsEvicted(
        at=0,
        gpu=0,
        models=("llama-8b",),
        reason="pressure",
        trigger="blender (pid 77) grew 3.1 GiB",
        freed_bytes=8 * 2**30,
        trigger_exe="blender",
    )
    text = notification_for(event)
    assert text is not None
    assert "ignore_app:blender" in keys(text) and "freeze_app:blender" in keys(text)
    (freeze,) = [a for a in text.actions if a.key == "freeze_app:blender"]
    assert freeze.label == "Freeze it while I game"
