"""Settings changed on a running engine reach every part that reads them (policy, classifier, ledgers, signal
sources and their interval, holders), through the engine's one door, and change what the engine does."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core import events as ev
from app.core.config import AppRule, ModelConfig, ServerConfig, Settings
from app.core.engine.commands import ApplySettings
from app.core.engine.steward import Steward
from app.core.errors import InsufficientVram
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.policy.contention import Command
from app.core.policy.signals import CompositeSignals
from app.core.residency.ledger import Ledgers
from app.core.residency.simulated_holder import SimulatedHolder, SimulatedModel
from app.core.servers.ollama import OllamaHolder
from app.core.signals.exclusive_apps import ExclusiveApps
from app.core.signals.process_scan import ProcessScanner
from app.core.units import GiB
from app.core.wiring import build_runtime

MODEL = "chat-4b"

CARD = f"""
description = "a 4 GiB model on a 12 GiB card with a desktop"
duration_s = 3600

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 3060"
uuid = "GPU-5e1a0c7e-0000-4000-8000-000000003060"
total = "12 GiB"
reserved = "256 MiB"

[[processes]]
pid = 1201
name = "Xorg"
used = "180 MiB"
kind = "graphics"

[[models]]
name = "{MODEL}"
size = "4 GiB"
"""


def apply(steward: Steward, settings: Settings) -> None:
    """New settings through the door, handled by the next tick (the test is the worker thread here)."""
    future = steward.submit(ApplySettings(settings))
    steward.tick()
    assert future.result(timeout=1).command == "settings"


@pytest.fixture
def world() -> Iterator[tuple[Steward, SimulatedBackend, ManualClock]]:
    clock = ManualClock()
    sim = SimulatedBackend(parse_scenario(CARD, name="live-settings"), clock=clock)
    settings = Settings()
    ledgers = Ledgers(settings.headroom_bytes, clock=clock)
    holder = SimulatedHolder(sim, [SimulatedModel(MODEL, 0, 4 * GiB)], ledgers, clock=clock)
    scanner = ProcessScanner(interval_s=settings.process_check_interval_secs, clock=clock)
    signals = CompositeSignals([ExclusiveApps(scanner, settings.exclusive_apps)])
    steward = Steward(settings, sim, [holder], signals=signals, ledgers=ledgers, clock=clock)
    yield steward, sim, clock
    steward.shutdown()


def run_for(steward: Steward, clock: ManualClock, seconds: float) -> Any:
    end = clock() + seconds
    snapshot = steward.tick()
    while clock() < end:
        clock.advance(0.1)
        snapshot = steward.tick()
    return snapshot


def resident(snapshot: Any) -> bool:
    return any(m.name == MODEL and m.state == "resident" for m in snapshot.models)


# Every setting the engine reads, a new value, and where the engine keeps it after the change.
CONSUMERS: dict[str, tuple[Any, Callable[[Steward], Any]]] = {
    "allow_shared_gpu": (False, lambda s: s.policy.settings.allow_shared_gpu),
    "auto_evict": (False, lambda s: s.policy.settings.auto_evict),
    "auto_pause_for_gaming": (False, lambda s: s.policy.settings.auto_pause_for_gaming),
    "poll_interval_secs": (0.25, lambda s: s.policy.settings.poll_interval_secs),
    "idle_poll_interval_secs": (5.0, lambda s: s.policy.settings.idle_poll_interval_secs),
    "pressure_threshold": (3 * GiB, lambda s: s.policy.settings.pressure_threshold),
    "pressure_threshold_percent": (20.0, lambda s: s.policy.settings.pressure_threshold_percent),
    "pressure_samples": (7, lambda s: s.policy.settings.pressure_samples),
    "resume_cooldown_secs": (90.0, lambda s: s.policy.cooldown_s(0)),
    "max_cooldown_secs": (900.0, lambda s: s.policy.settings.max_cooldown_secs),
    "calm_reset_secs": (7200.0, lambda s: s.policy.settings.calm_reset_secs),
    "thermal_pause_celsius": (80, lambda s: s.policy.settings.thermal_pause_celsius),
    "hold_models_on_battery": (False, lambda s: s.policy.settings.hold_models_on_battery),
    "baseline_max_process_vram": (GiB, lambda s: s.classifier._settings.baseline_max_process_vram),
    "app_rules": (
        (AppRule(match="blender", action="ignore"),),
        lambda s: (s.classifier._settings.app_rules, s.policy.settings.app_rules),
    ),
    "reserved_system_vram": (4 * GiB, lambda s: s.ledgers.for_gpu(0).headroom()),
    "headroom_percent": (50.0, lambda s: s.ledgers.for_gpu(0).headroom()),
    "exclusive_apps": (("blender",), lambda s: s.signals.sources[0]._wanted),  # type: ignore[union-attr]
    "process_check_interval_secs": (
        3.0,
        lambda s: s.signals.sources[0].scanner.interval_s,  # type: ignore[union-attr]
    ),
}


@pytest.mark.parametrize("key", sorted(CONSUMERS))
def test_every_setting_reaches_its_consumer_on_a_running_engine(world: Any, key: str) -> None:
    steward, _sim, clock = world
    run_for(steward, clock, 1.0)
    value, seen_by = CONSUMERS[key]
    before = seen_by(steward)
    events: list[ev.Event] = []
    steward.subscribe(events.append)
    apply(steward, dataclasses.replace(steward.settings, **{key: value}))
    after = seen_by(steward)
    assert after != before, f"{key}: the engine still uses the old value"
    applied = [e for e in events if isinstance(e, ev.SettingsApplied)]
    assert len(applied) == 1 and applied[0].changed == (key,)


def test_an_ignore_rule_added_live_stops_the_next_pressure_eviction(world: Any) -> None:
    steward, sim, clock = world
    assert resident(run_for(steward, clock, 2.0))
    apply(
        steward, dataclasses.replace(steward.settings, app_rules=(AppRule(match="blender", action="ignore"),))
    )
    sim.allocate(0, 5000, "blender", 3 * GiB)  # 3 GiB of growth: pressure, but the user said ignore it
    snapshot = run_for(steward, clock, 5.0)
    assert resident(snapshot), snapshot.reasons
    # the same growth from an app without a rule evicts: the scenario could have failed
    sim.allocate(0, 5001, "houdini", 3 * GiB)
    snapshot = run_for(steward, clock, 2.0)
    assert not resident(snapshot)


def test_a_headroom_changed_live_is_what_admission_uses(world: Any) -> None:
    steward, _sim, clock = world
    run_for(steward, clock, 1.0)
    unload = steward.submit(Command(kind="unload", model=MODEL))
    steward.tick()
    unload.result(timeout=1)
    # 12 GiB - 256 MiB reserved - 180 MiB Xorg - 10 GiB headroom: a 4 GiB model no longer fits
    apply(steward, dataclasses.replace(steward.settings, reserved_system_vram=10 * GiB))
    load = steward.submit(Command(kind="load", model=MODEL))
    steward.tick()
    with pytest.raises(InsufficientVram):
        load.result(timeout=1)
    apply(steward, dataclasses.replace(steward.settings, reserved_system_vram=2 * GiB))
    load = steward.submit(Command(kind="load", model=MODEL))
    steward.tick()
    assert load.result(timeout=1).model(MODEL).state == "loading"  # type: ignore[union-attr]


def test_auto_evict_turned_off_live_keeps_the_model_under_pressure(world: Any) -> None:
    steward, sim, clock = world
    run_for(steward, clock, 2.0)
    apply(steward, dataclasses.replace(steward.settings, auto_evict=False))
    sim.allocate(0, 5000, "blender", 3 * GiB)
    assert resident(run_for(steward, clock, 5.0))


def test_poll_intervals_changed_live_set_the_loop_pace(world: Any) -> None:
    steward, _sim, clock = world
    assert run_for(steward, clock, 2.0).next_poll_s == pytest.approx(0.1)
    apply(steward, dataclasses.replace(steward.settings, poll_interval_secs=0.4))
    assert run_for(steward, clock, 1.0).next_poll_s == pytest.approx(0.4)


def test_an_exclusive_app_added_live_evicts_while_it_runs(world: Any) -> None:
    """The real process-table scan: a real process named on the list takes the GPU."""
    steward, _sim, clock = world
    assert resident(run_for(steward, clock, 2.0))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        name = Path(sys.executable).name  # the process's name as /proc shows it
        apply(steward, dataclasses.replace(steward.settings, exclusive_apps=(name,)))
        snapshot = run_for(steward, clock, 2.0)
        assert snapshot.state == "evicted_for_game", snapshot.reasons
        assert not resident(snapshot)
    finally:
        child.kill()
        child.wait()


def test_a_model_added_to_the_settings_becomes_known_to_the_residency(tmp_path: Path) -> None:
    from app.core.residency.manager import ResidencyManager

    settings = Settings(models=(ModelConfig(name="a", path=tmp_path / "a.gguf", gpu=0),))
    manager = ResidencyManager(settings, {}, launcher=None)  # type: ignore[arg-type]
    manager.update_settings(
        dataclasses.replace(settings, models=(*settings.models, ModelConfig("b", tmp_path / "b.gguf", gpu=0)))
    )
    assert [m.name for m in manager.models()] == ["a", "b"]
    manager.update_settings(
        dataclasses.replace(settings, models=(ModelConfig("b", tmp_path / "b.gguf", gpu=0),))
    )
    assert [m.name for m in manager.models()] == ["b"]


def test_a_server_url_changed_live_is_asked_next(tmp_path: Path) -> None:
    clock = ManualClock()
    config = ServerConfig(kind="ollama", url="http://127.0.0.1:9")
    holder = OllamaHolder(config, backend=None, find_runners=list, clock=clock)  # type: ignore[arg-type]
    holder.update_settings(Settings(servers=(ServerConfig(kind="ollama", url="http://127.0.0.1:11434"),)))
    assert holder.client.base_url == "http://127.0.0.1:11434"


def test_always_ignore_applied_live_on_the_running_loop(tmp_path: Path, monkeypatch: Any) -> None:
    """The daemon's loop on its own thread: the rule goes through the door and stops the next eviction."""
    scenario = tmp_path / "card.toml"
    scenario.write_text(CARD)
    runtime = build_runtime(Settings(), simulate=scenario, with_api=False, audit=False)
    runtime.start_worker()
    try:
        steward = runtime.steward
        deadline = time.monotonic() + 5
        while not (steward.snapshot and resident(steward.snapshot)) and time.monotonic() < deadline:
            time.sleep(0.01)
        rule = (AppRule(match="blender", action="ignore"),)
        steward.submit(ApplySettings(dataclasses.replace(steward.settings, app_rules=rule))).result(timeout=2)
        runtime.backend.allocate(0, 5000, "blender", 3 * GiB)
        time.sleep(1.5)  # 15 samples at 10 Hz: three would evict without the rule
        assert steward.snapshot is not None and resident(steward.snapshot), steward.snapshot.reasons
    finally:
        runtime.stop()


def test_a_server_or_app_added_while_running_gets_its_holder_at_once(world: Any) -> None:
    """What the settings dialog and discovery's "Manage it" rely on: no restart needed."""
    from app.core.freeze.holder import FreezeHolder
    from app.core.wiring import ManagedHolders

    steward, sim, clock = world
    managed = ManagedHolders(sim, steward.ledgers, clock)
    steward._new_holders = managed.new_holders  # as build_runtime wires it
    run_for(steward, clock, 1.0)
    servers = (
        ServerConfig(kind="ollama", url="http://127.0.0.1:9"),
        ServerConfig(kind="freeze", name="ComfyUI", match="ComfyUI/main.py"),
    )
    apply(steward, dataclasses.replace(steward.settings, servers=servers))
    kinds = [type(h).__name__ for h in steward.holders]
    assert kinds == ["SimulatedHolder", "OllamaHolder", "FreezeHolder"]
    freezer = steward.holders[-1]
    assert isinstance(freezer, FreezeHolder) and freezer.role == "managed"
    apply(steward, dataclasses.replace(steward.settings, poll_interval_secs=0.2))  # the same entries again
    assert len(steward.holders) == 3, "an entry gets one holder, not one per settings change"


def test_a_reserve_larger_than_the_gpu_is_said_in_the_status(world: Any) -> None:
    steward, _sim, clock = world
    apply(steward, dataclasses.replace(steward.settings, reserved_system_vram=64 * GiB))
    snapshot = run_for(steward, clock, 1.0)
    assert any("reserved_system_vram (64.0 GiB) is as large as GPU 0" in n for n in snapshot.notes)
    assert any("reserved_system_vram" in n for n in snapshot.to_status()["notes"])
