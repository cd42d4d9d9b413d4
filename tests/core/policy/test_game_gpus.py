"""Games are tied to the GPUs their processes use: before the game's process shows, its signal frees every
GPU (we cannot know yet); once it shows on one GPU, the others get their models back after the cooldown, and
the game's end (its process exiting before its signal ends) frees nothing anywhere."""

from __future__ import annotations

from app.core.gpu.snapshot import ProcessKind
from app.core.holders import ModelState
from app.core.policy.actions import Evict, Reload
from app.core.units import GiB
from tests.fixtures.policy_world import PolicyWorld, actions_of, desktop_processes, game, model, proc

GAME_PID = 4242


def two_gpus() -> PolicyWorld:
    world = PolicyWorld(totals={0: 24 * GiB, 1: 24 * GiB}, foreign={0: desktop_processes(), 1: []})
    world.add_model(model("chat-8b", 8 * GiB, gpu=0))
    world.add_model(model("coder-8b", 8 * GiB, gpu=1))
    world.tick()
    return world


def test_a_game_on_gpu1_frees_gpu0_only_until_its_process_shows() -> None:
    world = two_gpus()
    signal = game("Cyberpunk 2077", GAME_PID)
    first = world.run(0.1, games=[signal])
    evicted = {a.gpu for a in actions_of(first, Evict)}  # type: ignore[attr-defined]
    assert evicted == {0, 1}, "before its process shows, the signal frees every GPU"
    world.set_process(1, proc(GAME_PID, "Cyberpunk2077.exe", 6 * GiB, ProcessKind.GRAPHICS))
    later = world.run(40, games=[signal])  # the cooldown (30 s) passes with the game still running
    reloads = actions_of(later, Reload)
    assert [a.gpu for a in reloads] == [0]  # type: ignore[attr-defined]
    assert world.models["chat-8b"].state == ModelState.RESIDENT
    assert world.models["coder-8b"].state == ModelState.EVICTED
    assert actions_of(later, Evict) == []


def test_the_games_process_exiting_before_its_signal_ends_evicts_nothing_elsewhere() -> None:
    world = two_gpus()
    signal = game("Cyberpunk 2077", GAME_PID)
    world.set_process(1, proc(GAME_PID, "Cyberpunk2077.exe", 6 * GiB, ProcessKind.GRAPHICS))
    start = world.run(0.1, games=[signal])
    assert {a.gpu for a in actions_of(start, Evict)} == {1}  # type: ignore[attr-defined]
    world.run(5, games=[signal])
    world.remove_process(1, GAME_PID)  # the game exits about a second before GameMode says so
    lingering = world.run(1.0, games=[signal])
    assert actions_of(lingering, Evict) == [], "the model on GPU 0 must stay"
    assert world.models["chat-8b"].state == ModelState.RESIDENT
    after = world.run(40)  # the signal ended: GPU 1's model comes back after the cooldown
    assert [a.gpu for a in actions_of(after, Reload)] == [1]  # type: ignore[attr-defined]
    assert actions_of(after, Evict) == []
