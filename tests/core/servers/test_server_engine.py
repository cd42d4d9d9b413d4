"""The engine with an Ollama server it manages, end to end on simulated time: the real Steward, policy and
classifier, the Ollama adapter over HTTP to the protocol-faithful stand-in, whose runner holds VRAM on the
simulated GPU (and frees it 1.5 s after Ollama has answered the unload).

Story (the study's S2 with Ollama instead of our own residency): an 8 GiB Ollama model on a 12 GiB card; a
GameMode game starts at 20 s and ramps to 10 GiB from 22 s; it exits at 120 s, its signal ends at 121 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from app.core.config import ServerConfig, Settings
from app.core.engine.steward import Steward
from app.core.events import Event
from app.core.policy.contention import Command
from app.core.servers.ollama import OllamaHolder
from app.core.signals.scenario import ScenarioSignals
from app.core.units import GiB
from app.core.wiring import build_runtime
from tests.fixtures.servers.ollama_standin import OllamaStandIn, PulledModel
from tests.fixtures.servers.world import DESKTOP_12GIB, ServerWorld, kinds

LLAMA = PulledModel(
    "llama3.1:8b", 8 * GiB, "46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e"
)

GAME = """
[[timeline]]
at = 20.0
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242

[[timeline]]
at = 22.0
event = "process_start"
pid = 4242
name = "Cyberpunk2077.exe"
used = "300 MiB"
kind = "graphics"

[[timeline]]
at = 22.0
event = "process_resize"
pid = 4242
to = "10 GiB"
duration_s = 8.0

[[timeline]]
at = 120.0
event = "process_exit"
pid = 4242

[[timeline]]
at = 121.0
event = "game_signal_end"
name = "Cyberpunk 2077"
"""


class Engine:
    def __init__(self, world: ServerWorld, standin: OllamaStandIn, keep_alive: str = "15m") -> None:
        self.world = world
        self.holder = world.holder(OllamaHolder, standin, standin.runners.processes, keep_alive=keep_alive)
        self.steward = Steward(
            Settings(),
            world.backend,
            [self.holder],
            signals=ScenarioSignals(world.sim),
            clock=world.clock,
            wall_clock=world.wall_clock,
        )
        self.events: list[Event] = []
        self.steward.subscribe(self.events.append)
        self.roles: dict[float, dict[tuple[int, int], str]] = {}

    def run(self, until_s: float, at: dict[float, Callable[[], object]] | None = None) -> None:
        pending = dict(sorted((at or {}).items()))
        clock = self.world.clock
        while clock() <= until_s:
            for t in [t for t in pending if t <= clock()]:
                pending.pop(t)()
            snapshot = self.steward.tick()
            self.roles[clock()] = dict(snapshot.roles)
            clock.advance(min(snapshot.next_poll_s, 1.0))
        self.steward.shutdown()


@pytest.fixture
def world() -> Iterator[ServerWorld]:
    w = ServerWorld(scenario_text=DESKTOP_12GIB + GAME)
    yield w
    w.close()


@pytest.fixture
def ollama(world: ServerWorld) -> OllamaStandIn:
    standin = OllamaStandIn(world.runners("ollama", free_delay_s=1.5), [LLAMA], wall_clock=world.wall_clock)
    world.add(standin)
    standin.client_load(LLAMA.name)  # the user chatted with it before the game
    return standin


def test_a_game_frees_the_ollama_model_and_it_comes_back_with_the_configured_keep_alive(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    engine = Engine(world, ollama, keep_alive="15m")
    (runner_pid,) = ollama.runners.pids()
    engine.run(until_s=175)
    events = engine.events

    # before the game, Ollama's runner is "managed": its VRAM is ours to free, never a foreign trigger
    roles_at_10s = next(roles for t, roles in engine.roles.items() if t >= 10.0)
    assert roles_at_10s[(0, runner_pid)] == "managed"

    (evicted,) = kinds(events, "ModelsEvicted")
    assert evicted.reason == "game" and evicted.trigger == "Cyberpunk 2077"
    assert evicted.models == (LLAMA.name,)
    # Ollama answered the unload at once; the engine waited until the runner's 8 GiB were back in NVML
    assert evicted.freed_bytes == LLAMA.size_bytes
    assert 1.4 <= (evicted.duration_s or 0) <= 1.7
    started_at = evicted.at - (evicted.duration_s or 0)
    assert 20.0 <= started_at < 20.5  # the GameMode signal comes at 20 s; polling is 100 ms
    assert evicted.at < 22.0  # all back before the game allocates
    (freed,) = kinds(events, "VramDeallocated")
    assert freed.residue_bytes == 0
    # so the game, ramping to 10 GiB from 22 s, never lacked memory
    assert world.sim.failed_allocations == []

    (resumed,) = kinds(events, "Resumed")
    assert resumed.models == (LLAMA.name,) and 151.0 <= resumed.at <= 152.0  # signal end + 30 s cooldown
    assert ollama.preload_keep_alives() == ["15m"]  # preloaded with the server's configured keep_alive
    assert ollama.vram_of(LLAMA.name) == LLAMA.size_bytes
    (allocated,) = kinds(events, "VramAllocated")
    assert allocated.at >= resumed.at
    assert [m.state for m in engine.holder.models()] == ["resident"]
    assert kinds(events, "EngineError") == []


def test_a_client_that_reloads_the_model_during_the_game_is_evicted_again_and_named(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    engine = Engine(world, ollama)
    held_at: dict[str, int] = {}

    def chat_client_asks() -> None:
        ollama.client_load(LLAMA.name)  # e.g. Open WebUI sends a chat: Ollama loads what fits of it
        held_at["loaded"] = ollama.runners.held_bytes()

    def look() -> None:
        held_at["later"] = ollama.runners.held_bytes()

    engine.run(until_s=175, at={60.0: chat_client_asks, 64.0: look})
    events = engine.events

    assert held_at["loaded"] > 0  # it did load (partly: the game holds 10 GiB)
    assert held_at["later"] == 0  # and was evicted again within one refresh plus the free delay
    (again,) = kinds(events, "ModelReloadedWhileHeld")
    assert again.model == LLAMA.name and again.reason == "game" and again.client is None
    assert 60.0 <= again.at <= 62.5
    assert again.describe() == "a client loaded llama3.1:8b (ollama) while a game was running; evicted again"
    (partly,) = kinds(events, "ModelPartlyOnCpu")  # what the client got was partly on the CPU
    assert partly.vram_bytes < partly.size_bytes
    assert world.sim.failed_allocations == []
    # after the game it comes back once, whole
    assert len(kinds(events, "Resumed")) == 1
    assert ollama.vram_of(LLAMA.name) == LLAMA.size_bytes


def test_an_ollama_that_is_down_costs_a_few_requests_and_one_event(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    ollama.mode = "hang_up"
    engine = Engine(world, ollama)
    engine.run(until_s=60)
    assert ollama.count() <= 6  # 0, 2, 6, 14, 30 s (+ at most one more): not 600 ticks' worth
    assert len(kinds(engine.events, "ServerDown")) == 1
    assert kinds(engine.events, "EngineError") == []


def test_build_runtime_adds_the_configured_servers_as_holders() -> None:
    settings = Settings(servers=(ServerConfig(kind="ollama", url="http://127.0.0.1:9", keep_alive="1h"),))
    runtime = build_runtime(settings, with_api=False, audit=False)
    try:
        (server,) = [h for h in runtime.steward.holders if h.name == "ollama"]
        assert isinstance(server, OllamaHolder)
        assert server.config.url == "http://127.0.0.1:9" and server.config.keep_alive == "1h"
    finally:
        runtime.stop()


def test_the_hold_ends_when_nothing_is_held_out_even_without_a_reload(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    """The user unloads the evicted model during the game: nothing comes back after it, and a client that
    loads the model later is not evicted again (the engine lifted the hold when nothing was out)."""
    engine = Engine(world, ollama)

    def user_unloads() -> None:
        engine.steward.submit(Command(kind="unload", model=LLAMA.name))

    def client_loads() -> None:
        ollama.client_load(LLAMA.name)

    engine.run(until_s=190, at={40.0: user_unloads, 180.0: client_loads})
    assert len(kinds(engine.events, "ModelsEvicted")) == 1
    assert kinds(engine.events, "Resumed") == []
    assert kinds(engine.events, "ModelReloadedWhileHeld") == []
    assert ollama.vram_of(LLAMA.name) == LLAMA.size_bytes
