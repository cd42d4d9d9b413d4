"""Simulation and replay honour every setting, the exclusive-app list included: the scenario's processes are
matched like real ones (issue 13, item 5), settings changes reach that match while the engine runs, and a
replay reports the outcome for the user (free VRAM, other processes refused memory), not only our actions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from app.core.engine.commands import ApplySettings
from app.core.events import Event, GameStarted, ModelsEvicted, Resumed
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.policy.signals import CompositeSignals
from app.core.replay import iter_lines, replay
from app.core.settings import Settings
from app.core.signals.exclusive_apps import ExclusiveApps
from app.core.signals.scenario import ScenarioSignals
from app.core.units import GiB, MiB, format_bytes
from app.core.wiring import Runtime, build_runtime

BLENDER_PID = 5150  # app/data/scenarios/exclusive-app.toml: starts at 10 s, exits at 60 s


def of(events: tuple[Event, ...] | list[Event], kind: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def run(
    scenario: str,
    settings: Settings,
    *,
    until_s: float,
    at: dict[float, Callable[[Runtime], object]] | None = None,
) -> tuple[Runtime, list[Event]]:
    """Tick the engine as the daemon would, on simulated time; `at` does things at given times."""
    clock = ManualClock()
    runtime = build_runtime(settings, simulate=scenario, clock=clock, with_api=False, audit=False)
    events: list[Event] = []
    runtime.steward.subscribe(events.append)
    pending = dict(sorted((at or {}).items()))
    while clock.now_s <= until_s:
        for t in [t for t in pending if t <= clock.now_s]:
            pending.pop(t)(runtime)
        snapshot = runtime.steward.tick()
        clock.advance(min(snapshot.next_poll_s, 1.0))
    runtime.steward.shutdown()
    return runtime, events


def apply(settings: Settings) -> Callable[[Runtime], object]:
    """New settings through the engine's door, as the settings dialog and the API send them."""
    return lambda runtime: runtime.steward.submit(ApplySettings(settings))


def test_simulation_matches_the_exclusive_app_list_over_the_scenario_processes() -> None:
    runtime = build_runtime(Settings(), simulate="exclusive-app", with_api=False, audit=False)
    try:
        signals = runtime.steward.signals
        assert isinstance(signals, CompositeSignals)
        assert {type(s) for s in signals.sources} == {ScenarioSignals, ExclusiveApps}
    finally:
        runtime.stop()


@pytest.mark.parametrize("entry", ["blender", "Blender", "blender.exe"])
def test_an_exclusive_app_on_the_list_evicts_when_its_process_starts_and_resume_follows_its_exit(
    entry: str,
) -> None:
    runtime, events = run("exclusive-app", Settings(exclusive_apps=(entry,)), until_s=100)
    (started,) = of(events, GameStarted)
    assert (started.source, started.pid, started.name) == ("exclusive_app", BLENDER_PID, entry)  # type: ignore[attr-defined]
    (evicted,) = of(events, ModelsEvicted)
    assert evicted.reason == "game" and evicted.trigger == entry  # type: ignore[attr-defined]
    # blender starts at 10 s; the process table is walked once a second (process_check_interval_secs)
    assert 10.0 <= evicted.at <= 11.1
    (resumed,) = of(events, Resumed)
    assert 90.0 <= resumed.at <= 91.1  # blender exits at 60 s; cooldown 30 s
    assert runtime.backend.failed_allocations == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("names", [(), ("blend",), ("resolve", "krita")])
def test_without_the_app_on_the_list_the_same_scenario_evicts_nothing(names: tuple[str, ...]) -> None:
    """blender's 800 MiB is no pressure: only the list can make it evict (whole names only)."""
    runtime, events = run("exclusive-app", Settings(exclusive_apps=names), until_s=100)
    assert of(events, GameStarted) == [] and of(events, ModelsEvicted) == []
    assert runtime.backend.failed_allocations == []  # type: ignore[attr-defined]


def test_the_list_changed_while_running_takes_effect_on_the_scenario_processes() -> None:
    """update_settings has real effect in simulation: blender added at 5 s evicts at its start; removed at
    30 s, its signal ends and the model comes back after the cooldown, although blender still runs."""
    base = Settings()
    _, events = run(
        "exclusive-app",
        base,
        until_s=100,
        at={5.0: apply(dataclasses.replace(base, exclusive_apps=("blender",))), 30.0: apply(base)},
    )
    (evicted,) = of(events, ModelsEvicted)
    assert 10.0 <= evicted.at <= 11.1
    (resumed,) = of(events, Resumed)
    assert 59.5 <= resumed.at <= 61.2  # 30 s + the 30 s cooldown, not blender's exit at 60 s + 30 s


def test_the_scan_interval_setting_reaches_the_simulated_process_scan() -> None:
    _, slow = run(
        "exclusive-app", Settings(exclusive_apps=("blender",), process_check_interval_secs=7.0), until_s=30
    )
    (evicted,) = of(slow, ModelsEvicted)
    # walks at 0, 7, 14 s (give or take a tick): blender, started at 10 s, is seen at the 14 s walk
    assert 13.9 <= evicted.at <= 14.3


def test_replay_reports_free_vram_after_each_tick_where_something_happens() -> None:
    result = replay("game-launch", Settings(), until_s=60)
    eviction = next(r for r in result.reports if any(isinstance(e, ModelsEvicted) for e in r.events))
    # after the eviction at 20 s: 12 GiB - 256 MiB reserved - 600 MiB desktop (the game starts at 22 s)
    assert eviction.free_bytes == ((0, 11432 * MiB),)
    assert eviction.refused == ()
    backend = SimulatedBackend.from_file("game-launch", clock=ManualClock(eviction.at))
    # and what `status --simulate game-launch --at T` says at that moment
    assert eviction.free_bytes[0][1] == backend.sample().gpus[0].free_bytes
    lines = list(iter_lines(result, as_json=False))
    assert (
        f"{eviction.at:9.2f}s  -> outcome             GPU 0: 11.2 GiB free; no other process refused memory"
        in lines
    )
    assert result.failed_allocations == ()
    assert result.refusal_summary() == "no other process was refused memory"


def test_replay_says_when_another_process_is_refused_memory() -> None:
    """With auto-pause and auto-evict off the game lacks VRAM from 24.4 s: the replay says so, by name."""
    result = replay("game-launch", Settings(auto_pause_for_gaming=False, auto_evict=False), until_s=40)
    refused = [r for r in result.reports if r.refused]
    assert refused, "the game's refusal must be reported"
    first = refused[0]
    assert 24.3 <= first.at <= 24.6
    (refusal,) = first.refused
    assert (refusal.gpu, refusal.pid, refusal.name) == (0, 4242, "Cyberpunk2077.exe")
    assert refusal.got_bytes < refusal.wanted_bytes
    assert first.free_bytes == ((0, 0),)  # the game took all it could get
    assert result.failed_allocations and all(f.pid == 4242 for f in result.failed_allocations)
    worst = max(f.wanted_bytes - f.free_bytes for f in result.failed_allocations)
    summary = result.refusal_summary()
    assert summary.startswith(
        "other processes refused memory: Cyberpunk2077.exe (pid 4242) on GPU 0 from 24."
    )
    assert summary.endswith(f"short by up to {format_bytes(worst)}")
    assert worst == 10 * GiB - 3240 * MiB  # fully ramped at 10 GiB, with our 8 GiB model still there


def test_replay_json_has_one_outcome_object_per_reported_tick() -> None:
    import json

    result = replay("exclusive-app", Settings(exclusive_apps=("blender",)), until_s=20)
    objects = [json.loads(line) for line in iter_lines(result, as_json=True)]
    outcomes = [o for o in objects if o["type"] == "Outcome"]
    assert len(outcomes) == len(result.reports)
    evicted_at = next(o["at"] for o in objects if o["type"] == "ModelsEvicted")
    after = next(o for o in outcomes if o["at"] == evicted_at)
    assert after["refused"] == [] and after["gpus"][0]["index"] == 0
    assert after["gpus"][0]["free_bytes"] > 10 * 1024 * MiB  # the 6 GiB model is gone
