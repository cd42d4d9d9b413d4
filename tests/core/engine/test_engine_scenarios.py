"""The engine end to end on simulated time: policy, simulated residency, scenario game signals.

These are the study's scenarios (S2) and the policy issue's list, run through the same Steward the
daemon and the tray drive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from app.core.config import AppRule, Settings
from app.core.events import Event
from app.core.gpu.simulated import ManualClock
from app.core.policy.contention import Command
from app.core.replay import replay
from app.core.units import GiB
from app.core.wiring import Runtime, build_runtime


def kinds(events: tuple[Event, ...] | list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def run_engine(
    scenario: str,
    settings: Settings | None = None,
    *,
    until_s: float,
    at: dict[float, Callable[[Runtime], object]] | None = None,
) -> tuple[Runtime, list[Event], list[str]]:
    """Tick the engine on simulated time; `at` runs actions (user commands) at given times."""
    clock = ManualClock()
    runtime = build_runtime(
        settings or Settings(), simulate=scenario, clock=clock, with_api=False, audit=False
    )
    events: list[Event] = []
    runtime.steward.subscribe(events.append)
    pending = dict(sorted((at or {}).items()))
    states: list[str] = []
    while clock.now_s <= until_s:
        for t in [t for t in pending if t <= clock.now_s]:
            pending.pop(t)(runtime)
        snapshot = runtime.steward.tick()
        states.append(snapshot.state)
        clock.advance(min(snapshot.next_poll_s, 1.0))
    runtime.steward.shutdown()
    return runtime, events, states


def test_s2_game_launch_evicts_before_the_game_needs_the_memory_and_resumes_after_cooldown() -> None:
    runtime, events, _ = run_engine("game-launch", until_s=175)
    evicted = kinds(events, "ModelsEvicted")
    assert len(evicted) == 1
    assert evicted[0].reason == "game"  # type: ignore[attr-defined]
    assert evicted[0].trigger == "Cyberpunk 2077"  # type: ignore[attr-defined]
    assert 20.0 <= evicted[0].at < 20.5  # the GameMode signal comes at 20 s; polling is 100 ms
    # freed as measured through the (simulated) NVML: the 8 GiB model
    assert evicted[0].freed_bytes == 8 * GiB  # type: ignore[attr-defined]
    # the game ramps to 10 GiB from 22 s: none of its allocations failed
    assert runtime.backend.failed_allocations == []  # type: ignore[attr-defined]
    resumed = kinds(events, "Resumed")
    assert len(resumed) == 1
    # the signal ends at 121 s; default cooldown 30 s
    assert 151.0 <= resumed[0].at <= 152.0
    assert kinds(events, "VramAllocated")[-1].at > resumed[0].at


def test_without_the_engine_the_game_would_have_failed() -> None:
    """Control: the same scenario with auto-pause and auto-evict off -> the game's allocations fail."""
    settings = Settings(auto_pause_for_gaming=False, auto_evict=False)
    runtime, events, _ = run_engine("game-launch", settings, until_s=40)
    assert kinds(events, "ModelsEvicted") == []
    assert kinds(events, "GameWarning"), "a game while auto-pause is off must warn the user"
    assert runtime.backend.failed_allocations, "the game should have lacked VRAM"  # type: ignore[attr-defined]


def test_desktop_idle_never_evicts() -> None:
    result = replay("desktop-idle", Settings(), until_s=600)
    assert kinds(list(result.events), "ModelsEvicted") == []


def test_browser_growth_below_threshold_never_evicts() -> None:
    result = replay("browser-growth", Settings(), until_s=120)
    assert kinds(list(result.events), "VramAllocated"), "the model must be resident first"
    assert kinds(list(result.events), "ModelsEvicted") == []


def test_flapping_process_causes_only_a_few_cycles() -> None:
    result = replay("flapping-process", Settings(), until_s=620)
    cycles = len(kinds(list(result.events), "ModelsEvicted"))
    reloads = len(kinds(list(result.events), "Resumed"))
    print(f"flapping for 10 minutes: {cycles} evictions, {reloads} reloads")
    assert 1 <= cycles <= 5
    assert reloads <= cycles


def test_user_pause_holds_through_game_end_and_resume_lifts_it() -> None:
    def pause(rt: Runtime) -> object:
        return rt.steward.submit(Command(kind="pause"))

    def resume(rt: Runtime) -> object:
        return rt.steward.submit(Command(kind="resume"))

    _, events, _ = run_engine("game-launch", until_s=260, at={10.0: pause, 200.0: resume})
    evicted = kinds(events, "ModelsEvicted")
    assert evicted and evicted[0].at < 11 and evicted[0].reason in ("pause", "user")  # type: ignore[attr-defined]
    resumed = kinds(events, "Resumed")
    assert resumed, "resume must bring the model back"
    assert all(r.at >= 200.0 for r in resumed), "no reload while paused, even after the game ended at 121 s"


def test_dedicated_mode_refuses_loads_while_a_foreign_compute_job_holds_the_gpu() -> None:
    settings = Settings(allow_shared_gpu=False)

    def unload(rt: Runtime) -> object:
        return rt.steward.submit(Command(kind="unload", model="llama-3.1-70b-instruct-fp8"))

    def load(rt: Runtime) -> object:
        return rt.steward.submit(Command(kind="load", model="llama-3.1-70b-instruct-fp8"))

    _, events, _ = run_engine("dedicated-server", settings, until_s=120, at={50.0: unload, 100.0: load})
    refused = [e for e in kinds(events, "LoadRefused") if e.at >= 100.0]
    assert refused, "a load while the foreign job runs must be refused in dedicated mode"


def test_per_app_ignore_rule_overrides_pressure() -> None:
    base = replay("dedicated-server", Settings(), until_s=120)
    assert kinds(list(base.events), "ModelsEvicted"), "control: without the rule the job triggers an eviction"
    settings = Settings(app_rules=(AppRule(match="python3", action="ignore"),))
    result = replay("dedicated-server", settings, until_s=120)
    assert kinds(list(result.events), "ModelsEvicted") == []


def test_steam_game_evicts_and_names_the_app_id() -> None:
    result = replay("steam-game", Settings(), until_s=260)
    started = kinds(list(result.events), "GameStarted")
    assert started and started[0].app_id  # type: ignore[attr-defined]
    assert kinds(list(result.events), "ModelsEvicted")[0].reason == "game"  # type: ignore[attr-defined]


def test_lost_gpu_is_reported_and_the_other_gpu_keeps_its_model() -> None:
    result = replay("gpu-lost", Settings(), until_s=60)
    events = list(result.events)
    lost = kinds(events, "GpuLost")
    assert [e.gpu for e in lost] == [1]  # type: ignore[attr-defined]
    evicted = kinds(events, "ModelsEvicted")
    assert all(e.gpu == 1 for e in evicted)  # type: ignore[attr-defined]
    gpu0_frees = [
        e
        for e in kinds(events, "VramDeallocated")
        if e.gpu == 0 and e.reason != "shutdown"  # type: ignore[attr-defined]
    ]
    assert gpu0_frees == []


@pytest.mark.parametrize("toggle", ["auto_pause_for_gaming"])
def test_settings_changed_live_take_effect(toggle: str) -> None:
    def turn_off(rt: Runtime) -> None:
        rt.steward.update_settings(dataclasses.replace(rt.steward.settings, **{toggle: False}))

    _, events, _ = run_engine("game-launch", until_s=40, at={5.0: turn_off})
    assert [e for e in kinds(events, "ModelsEvicted") if e.reason == "game"] == []  # type: ignore[attr-defined]
    assert kinds(events, "GameWarning"), "with auto-pause off the user is warned instead"
    # auto_evict is still on: the game's growth is caught as pressure once it is sustained
    pressure = [e for e in kinds(events, "ModelsEvicted") if e.reason == "pressure"]  # type: ignore[attr-defined]
    assert pressure and pressure[0].at > 22.0


def test_system_sleep_evicts_before_and_reloads_after() -> None:
    def sleep(rt: Runtime) -> None:
        rt.steward.set_sleeping(True)

    def woke(rt: Runtime) -> None:
        rt.steward.set_sleeping(False)

    _, events, states = run_engine("browser-growth", until_s=30, at={10.0: sleep, 20.0: woke})
    evicted = kinds(events, "ModelsEvicted")
    assert [e.reason for e in evicted] == ["sleep"]  # type: ignore[attr-defined]
    assert 10.0 <= evicted[0].at < 10.5
    resumed = kinds(events, "Resumed")
    assert resumed and 20.0 <= resumed[0].at < 21.0, "after waking, models come back without a cooldown"
    assert "sleeping" in states


def test_on_battery_holds_no_models_when_the_user_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import collections

    import psutil

    battery = collections.namedtuple("battery", "percent secsleft power_plugged")
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery(80, 3600, False))
    _, events, _ = run_engine("browser-growth", Settings(hold_models_on_battery=False), until_s=10)
    assert kinds(events, "VramAllocated") == [], "no model is loaded on battery"
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery(80, None, True))
    _, events, _ = run_engine("browser-growth", Settings(hold_models_on_battery=False), until_s=10)
    assert kinds(events, "VramAllocated"), "plugged in: the model loads"
