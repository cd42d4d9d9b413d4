"""ContentionPolicy scenarios: games, the user, dedicated mode, heat, lost GPUs, power, sleep, no GPU.

Each test drives PolicyWorld (sample -> classify -> decide -> act) on an injected clock: instant and exact.
Pressure and flapping live in test_pressure.py; the resume window's arithmetic in test_cooldown.py.
"""

from __future__ import annotations

from dataclasses import replace

from app.core.config import AppRule, Settings
from app.core.gpu.null import NullBackend
from app.core.gpu.simulated import ManualClock
from app.core.gpu.snapshot import BackendState, GpuState, ProcessKind, TelemetrySnapshot
from app.core.holders import ModelState
from app.core.policy.actions import Command, EngineState, Evict, PolicyInputs, RefuseLoads, Reload, WarnGame
from app.core.policy.classify import NOT_VISIBLE_NOTE, Classification
from app.core.policy.contention import ContentionPolicy, describe
from app.core.units import GiB, MiB
from tests.fixtures.policy_world import PolicyWorld, actions_of, game, model, proc

CYBERPUNK = game("Cyberpunk 2077", 700, source="steam", app_id="1091500")
BOTH = ("llama-8b", "embedder")  # the two models of world_with_models(), priority order


def world_with_models(settings: Settings | None = None, **kw: object) -> PolicyWorld:
    world = PolicyWorld(settings=settings or Settings(), **kw)  # type: ignore[arg-type]
    world.add_model(model("llama-8b", 4 * GiB, priority=1))
    world.add_model(model("embedder", 1 * GiB))
    first = world.tick()
    assert first.state == EngineState.ACTIVE
    assert first.actions == ()
    return world


# --- games --------------------------------------------------------------------------------------------


def test_resume_now_during_a_game_brings_the_models_back_for_that_game_only() -> None:
    """The notification's "Resume now" while the game runs: the user keeps the models for this game;
    a new game evicts again, and foreign pressure still applies."""
    world = world_with_models()
    world.clock.advance(0.1)
    assert actions_of([world.tick(games=[CYBERPUNK])], Evict)
    world.clock.advance(1.0)
    back = world.tick(games=[CYBERPUNK], commands=[Command(kind="resume")])
    assert actions_of([back], Reload) == [Reload(0, BOTH, "user")]
    assert world.resident() == ["embedder", "llama-8b"]
    during = world.run(30, step_s=0.5, games=[CYBERPUNK])
    assert actions_of(during, Evict) == [], "the same game does not evict again"
    other = game("Baldur's Gate 3", 701, source="steam", app_id="1086940")
    world.clock.advance(0.1)
    assert [e.reason for e in actions_of([world.tick(games=[CYBERPUNK, other])], Evict)] == ["game"]  # type: ignore[attr-defined]


def test_resume_now_during_a_game_holds_against_that_games_own_pressure_and_keeps_the_cooldown() -> None:
    """Resume now means "keep my models for this game": the game's own growth, even into the headroom, no
    longer takes them again 2 s later, and the reload window does not double for it."""
    world = world_with_models()
    world.clock.advance(0.1)
    world.tick(games=[CYBERPUNK])
    world.set_process(0, proc(700, "Cyberpunk2077.exe", 2 * GiB))
    world.clock.advance(1.0)
    world.tick(games=[CYBERPUNK], commands=[Command(kind="resume")])
    assert world.resident() == ["embedder", "llama-8b"]
    world.set_process(0, proc(700, "Cyberpunk2077.exe", 6 * GiB))  # grows 4 GiB, free under the headroom
    during = world.run(20, step_s=0.5, games=[CYBERPUNK])
    assert actions_of(during, Evict) == [], "the user kept the models for this game"
    assert world.policy.cooldown_s(0) == world.settings.resume_cooldown_secs
    # another application's growth is pressure as ever
    world.set_process(0, proc(900, "/usr/bin/blender", 2 * GiB))
    later = world.run(2, step_s=0.1, games=[CYBERPUNK])
    assert actions_of(later, Evict)


def test_game_signal_evicts_everything_at_once_and_resumes_only_after_the_cooldown() -> None:
    world = world_with_models()
    world.clock.advance(0.1)
    decision = world.tick(games=[CYBERPUNK])
    evicts = actions_of([decision], Evict)
    # the game's identity travels with the eviction: its notification offers a rule that matches it
    assert evicts == [Evict(0, ("llama-8b", "embedder"), "game", "Cyberpunk 2077", trigger_app_id="1091500")]
    assert RefuseLoads(0, "game", "Cyberpunk 2077 is running") in decision.actions
    assert decision.state == EngineState.EVICTED_FOR_GAME
    assert world.resident() == []

    # the game allocates 9 GiB and plays for ten minutes: nothing comes back, nothing is evicted again
    world.set_process(0, proc(700, "Cyberpunk2077.exe", 9 * GiB))
    during = world.run(600, step_s=0.5, games=[CYBERPUNK])
    assert actions_of(during, Evict) == [] and actions_of(during, Reload) == []
    assert {d.state for d in during} == {EngineState.EVICTED_FOR_GAME}

    # the game ends: reload exactly one cooldown (30 s) after the last tick that saw it, not before
    last_seen = world.clock()
    world.remove_process(0, 700)
    world.clock.advance(0.1)
    ended = world.tick()
    assert ended.state == EngineState.COOLDOWN
    assert ended.resume_at == last_seen + 30.0
    assert ended.next_poll_s == world.settings.poll_interval_secs  # waiting to resume: poll fast
    resume_at = ended.resume_at
    world.clock.now_s = resume_at - 0.1
    assert actions_of([world.tick()], Reload) == []
    world.clock.now_s = resume_at
    back = world.tick()
    assert actions_of([back], Reload) == [Reload(0, ("llama-8b", "embedder"), "cooldown")]
    assert world.resident() == ["embedder", "llama-8b"]


def test_resume_waits_for_enough_free_vram() -> None:
    # blender is under an "ignore" rule: it never triggers, but while it holds 7 GiB our 4 GiB model does
    # not fit above the 2 GiB headroom (12 - 0.75 desktop - 7 = 4.25 free, 2.25 above headroom).
    settings = Settings(app_rules=(AppRule("blender", "ignore"),))
    world = world_with_models(settings)
    world.tick(games=[CYBERPUNK])
    world.set_process(0, proc(900, "blender", 7 * GiB))
    world.clock.advance(1)
    world.tick()  # the game ended
    waiting = world.run(60)
    reloads = actions_of(waiting, Reload)
    assert reloads == [Reload(0, ("embedder",), "cooldown")]  # the 1 GiB one fits, the 4 GiB one waits
    assert "llama-8b on GPU 0 wait for room" in waiting[-1].reasons[0]
    world.remove_process(0, 900)
    later = world.run(31)
    assert actions_of(later, Reload) == [Reload(0, ("llama-8b",), "cooldown")]


def test_user_pause_holds_through_game_end_and_resume_lifts_it() -> None:
    world = world_with_models()
    world.tick(games=[CYBERPUNK])
    world.clock.advance(5)
    paused = world.tick(games=[CYBERPUNK], commands=[Command("pause")])
    assert paused.state == EngineState.PAUSED
    assert RefuseLoads(0, "paused", "paused by you: choose Resume to load models") in paused.actions
    world.clock.advance(5)
    world.tick()  # the game ends
    held = world.run(600, step_s=1.0)
    assert actions_of(held, Reload) == []
    assert {d.state for d in held} == {EngineState.PAUSED}
    assert held[-1].next_poll_s == world.settings.idle_poll_interval_secs  # paused, holding nothing
    assert held[-1].resume_at is None
    world.clock.advance(1)
    resumed = world.tick(commands=[Command("resume")])
    assert actions_of([resumed], Reload) == [Reload(0, ("llama-8b", "embedder"), "user")]
    assert resumed.state == EngineState.ACTIVE


def test_pause_evicts_what_is_resident_and_refuses_loads() -> None:
    world = world_with_models()
    decision = world.tick(commands=[Command("pause")])
    assert actions_of([decision], Evict) == [
        Evict(0, ("llama-8b", "embedder"), "pause", "you paused VRAM Steward")
    ]
    assert world.policy.paused


def test_evict_now_then_the_usual_resume_rules() -> None:
    world = world_with_models()
    world.clock.advance(1)
    decision = world.tick(commands=[Command("evict_now")])
    assert actions_of([decision], Evict) == [
        Evict(0, ("llama-8b", "embedder"), "user", "you chose Evict now")
    ]
    assert decision.state == EngineState.COOLDOWN
    assert decision.resume_at is None  # known from the next tick on
    later = world.run(29.9)
    assert actions_of(later, Reload) == []
    assert later[-1].resume_at is not None
    assert actions_of(world.run(0.2), Reload) == [Reload(0, ("llama-8b", "embedder"), "cooldown")]
    assert world.policy.cooldown_s(0) == 30.0  # the user's eviction does not grow the window


def test_auto_pause_off_warns_once_and_free_now_keeps_models_out_until_the_game_ends() -> None:
    world = world_with_models(Settings(auto_pause_for_gaming=False))
    first = world.tick(games=[CYBERPUNK])
    assert actions_of([first], Evict) == []
    assert actions_of([first], WarnGame) == [WarnGame(0, CYBERPUNK)]
    assert not any(isinstance(a, RefuseLoads) for a in first.actions)
    again = world.run(5, games=[CYBERPUNK])
    assert actions_of(again, WarnGame) == []  # once per game
    freed = world.tick(games=[CYBERPUNK], commands=[Command("evict_now", gpu=0)])
    assert actions_of([freed], Evict)[0].reason == "user"  # type: ignore[attr-defined]
    during = world.run(120, games=[CYBERPUNK])
    assert actions_of(during, Reload) == []
    assert during[-1].state == EngineState.EVICTED_FOR_GAME


def test_turning_auto_pause_on_mid_game_evicts_on_the_next_tick() -> None:
    world = world_with_models(Settings(auto_pause_for_gaming=False))
    world.tick(games=[CYBERPUNK])
    assert world.resident() == ["embedder", "llama-8b"]
    world.update_settings(replace(world.settings, auto_pause_for_gaming=True))
    decision = world.tick(games=[CYBERPUNK])
    evicts = actions_of([decision], Evict)
    assert evicts == [Evict(0, ("llama-8b", "embedder"), "game", "Cyberpunk 2077", trigger_app_id="1091500")]


def test_a_game_evicts_only_its_gpu_once_it_is_on_one() -> None:
    world = PolicyWorld(totals={0: 12 * GiB, 1: 12 * GiB}, foreign={0: [], 1: []})
    world.add_model(model("on-0", 2 * GiB, gpu=0))
    world.add_model(model("on-1", 2 * GiB, gpu=1))
    world.tick()
    world.set_process(1, proc(700, "Cyberpunk2077.exe", 3 * GiB))
    decision = world.tick(games=[CYBERPUNK])
    evicts = actions_of([decision], Evict)
    assert evicts == [Evict(1, ("on-1",), "game", "Cyberpunk 2077", None, "cyberpunk2077", "1091500")]
    assert world.resident() == ["on-0"]


def test_a_game_not_on_a_gpu_yet_evicts_every_gpu_we_hold() -> None:
    world = PolicyWorld(totals={0: 12 * GiB, 1: 12 * GiB}, foreign={0: [], 1: []})
    world.add_model(model("on-0", 2 * GiB, gpu=0))
    world.add_model(model("on-1", 2 * GiB, gpu=1))
    world.tick()
    decision = world.tick(games=[CYBERPUNK])
    assert sorted(a.gpu for a in actions_of([decision], Evict)) == [0, 1]  # type: ignore[attr-defined]


def test_per_app_evict_rule_counts_as_a_game_even_with_auto_pause_off() -> None:
    settings = Settings(auto_pause_for_gaming=False, app_rules=(AppRule("blender", "evict"),))
    world = world_with_models(settings)
    world.set_process(0, proc(900, "/usr/bin/blender", 100 * MiB, ProcessKind.COMPUTE))
    decision = world.tick()
    assert actions_of([decision], Evict) == [
        Evict(0, ("llama-8b", "embedder"), "game", "blender", trigger_exe="blender")
    ]
    assert decision.state == EngineState.EVICTED_FOR_GAME


def test_per_app_ignore_rule_on_a_steam_app_id_lets_the_game_run_beside_our_models() -> None:
    settings = Settings(app_rules=(AppRule("steam:1091500", "ignore"),))
    world = world_with_models(settings)
    world.set_process(0, proc(700, "Cyberpunk2077.exe", 4 * GiB))
    decisions = world.run(60, games=[CYBERPUNK])
    assert actions_of(decisions, Evict) == []
    assert decisions[-1].state == EngineState.ACTIVE


def test_models_the_user_unloaded_are_not_reloaded() -> None:
    world = world_with_models()
    world.tick(games=[CYBERPUNK])
    world.models["embedder"] = replace(world.models["embedder"], state=ModelState.UNLOADED)
    world.tick()
    reloads = actions_of(world.run(31), Reload)
    assert reloads == [Reload(0, ("llama-8b",), "cooldown")]


# --- dedicated mode, heat, lost GPUs ------------------------------------------------------------------


def test_dedicated_mode_refuses_loads_while_a_foreign_compute_process_is_there() -> None:
    world = world_with_models(Settings(allow_shared_gpu=False))
    world.set_process(0, proc(950, "/usr/bin/python3 train.py", 600 * MiB, ProcessKind.COMPUTE))
    decision = world.tick()
    refusals = actions_of([decision], RefuseLoads)
    assert len(refusals) == 1 and refusals[0].reason == "dedicated"  # type: ignore[attr-defined]
    assert "python3 train.py (pid 950)" in refusals[0].detail  # type: ignore[attr-defined]
    assert actions_of([decision], Evict) == []  # refuse only: what is resident stays
    assert decision.state == EngineState.DEDICATED_BLOCKED
    # evicted models do not come back while it computes; they do once it is gone (and the cooldown passed)
    world.tick(commands=[Command("evict_now")])
    assert actions_of(world.run(60), Reload) == []
    world.remove_process(0, 950)
    assert actions_of(world.run(0.2), Reload) == [Reload(0, ("llama-8b", "embedder"), "cooldown")]


def test_dedicated_mode_ignores_graphics_only_processes_and_shared_mode_refuses_nothing() -> None:
    world = world_with_models(Settings(allow_shared_gpu=False))
    world.set_process(0, proc(951, "blender", 600 * MiB, ProcessKind.GRAPHICS))
    assert actions_of([world.tick()], RefuseLoads) == []
    shared = world_with_models()
    shared.set_process(0, proc(950, "train", 600 * MiB, ProcessKind.COMPUTE))
    assert actions_of([shared.tick()], RefuseLoads) == []


def test_thermal_pause_with_five_degrees_of_hysteresis() -> None:
    world = world_with_models(Settings(thermal_pause_celsius=85))
    world.temperatures[0] = 86
    decision = world.tick()
    assert actions_of([decision], Evict) == [
        Evict(0, ("llama-8b", "embedder"), "thermal", "GPU 0 at 86 °C (pause above 85 °C)")
    ]
    assert decision.state == EngineState.THERMAL
    world.temperatures[0] = 81  # cooler, not cool enough
    assert actions_of(world.run(60), Reload) == []
    world.temperatures[0] = 80
    world.run(29.9)
    assert world.resident() == []
    assert actions_of(world.run(0.2), Reload) == [Reload(0, ("llama-8b", "embedder"), "cooldown")]


def test_a_lost_gpu_counts_its_models_as_evicted_until_it_returns() -> None:
    world = world_with_models()
    world.gpu_states[0] = GpuState.LOST
    decision = world.tick()
    evicts = actions_of([decision], Evict)
    assert [(e.reason, e.models) for e in evicts] == [("lost", ("llama-8b", "embedder"))]  # type: ignore[attr-defined]
    assert any(isinstance(a, RefuseLoads) and a.reason == "lost" for a in decision.actions)
    assert decision.state == EngineState.COOLDOWN
    assert actions_of(world.run(120), Reload) == []
    world.gpu_states[0] = GpuState.OK
    back = world.run(31)
    assert actions_of(back, Reload) == [Reload(0, ("llama-8b", "embedder"), "cooldown")]


def test_a_gpu_missing_from_the_snapshot_is_treated_as_lost() -> None:
    world = PolicyWorld(totals={0: 12 * GiB, 1: 12 * GiB}, foreign={0: [], 1: []})
    world.add_model(model("on-1", 2 * GiB, gpu=1))
    world.tick()
    del world.totals[1]
    decision = world.tick()
    assert [e.reason for e in actions_of([decision], Evict)] == ["lost"]  # type: ignore[attr-defined]


# --- power and sleep ----------------------------------------------------------------------------------


def test_on_battery_evicts_only_when_asked_to_and_reloads_on_mains_after_the_cooldown() -> None:
    holding = world_with_models()
    assert actions_of(holding.run(5, on_battery=True), Evict) == []  # hold_models_on_battery defaults to True
    world = world_with_models(Settings(hold_models_on_battery=False))
    decision = world.tick(on_battery=True)
    assert [e.reason for e in actions_of([decision], Evict)] == ["battery"]  # type: ignore[attr-defined]
    assert decision.state == EngineState.ON_BATTERY
    assert actions_of(world.run(60, on_battery=True), Reload) == []
    world.run(29.9, on_battery=False)
    assert world.resident() == []
    assert actions_of(world.run(0.2, on_battery=False), Reload) == [
        Reload(0, ("llama-8b", "embedder"), "cooldown")
    ]


def test_sleep_evicts_before_and_reloads_right_after_waking() -> None:
    world = world_with_models()
    decision = world.tick(sleeping=True)
    assert [e.reason for e in actions_of([decision], Evict)] == ["sleep"]  # type: ignore[attr-defined]
    assert decision.state == EngineState.SLEEPING
    world.clock.advance(8 * 3600)
    woke = world.tick(sleeping=False)
    assert actions_of([woke], Reload) == [Reload(0, ("llama-8b", "embedder"), "wake")]


# --- no GPU, failing backend, the container fallback ---------------------------------------------------


def test_no_gpu_means_no_gpu_state_and_no_actions() -> None:
    clock = ManualClock(1000.0)
    policy = ContentionPolicy(Settings(), clock=clock)
    snapshot = NullBackend(clock=clock).sample()
    decision = policy.decide(
        PolicyInputs(snapshot=snapshot, classification=Classification(roles={}), models=(model("m", GiB),))
    )
    assert decision.state == EngineState.NO_GPU
    assert decision.actions == ()
    assert decision.next_poll_s == Settings().idle_poll_interval_secs
    assert "No NVIDIA GPU" in decision.reasons[0]
    assert describe(decision).startswith("No NVIDIA GPU")


def test_a_failing_backend_changes_nothing_and_says_so() -> None:
    policy = ContentionPolicy(Settings(), clock=ManualClock(1000.0))
    snapshot = TelemetrySnapshot(
        backend="nvml", state=BackendState.ERROR, taken_at=0.0, message="NVML failed"
    )
    decision = policy.decide(
        PolicyInputs(snapshot=snapshot, classification=Classification(roles={}), models=(model("m", GiB),))
    )
    assert (decision.state, decision.actions, decision.reasons) == (EngineState.ERROR, (), ("NVML failed",))
    assert decision.next_poll_s == Settings().poll_interval_secs  # we hold VRAM: keep looking


def test_in_a_container_our_own_vram_is_not_mistaken_for_pressure() -> None:
    world = PolicyWorld(visible_pids=False)
    world.add_model(model("big", 8 * GiB))
    decisions = world.run(30)
    assert actions_of(decisions, Evict) == []
    assert world.last_classification is not None
    assert any(NOT_VISIBLE_NOTE in note for note in world.last_classification.notes)


# --- polling and describe -------------------------------------------------------------------------------


def test_poll_fast_only_while_holding_or_waiting() -> None:
    world = PolicyWorld()
    idle = world.tick()
    assert (idle.state, idle.next_poll_s) == (EngineState.IDLE, 2.0)
    world.add_model(model("m", 2 * GiB))
    assert world.tick().next_poll_s == 0.1


def test_describe_says_what_happened_for_people() -> None:
    world = world_with_models()
    text = describe(world.tick(games=[CYBERPUNK]))
    assert text == ("Out of the way for a game — freed llama-8b, embedder on GPU 0 (game: Cyberpunk 2077)")
    world.clock.advance(1)
    waiting = describe(world.tick())
    assert waiting.startswith(
        "Waiting for the GPU to stay free — llama-8b, embedder on GPU 0 come back in 29 s"
    )
