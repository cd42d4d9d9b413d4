"""The Ollama adapter against the protocol-faithful stand-in and the documented responses (canned.py): what it
lists, how it unloads (verified through the simulated NVML) and restores, and Ollama's quirks."""

from __future__ import annotations

import copy
import datetime as dt
import time

import pytest

from app.core.events import Event
from app.core.holders import ModelState
from app.core.servers.base import JsonHttpClient
from app.core.servers.holder import run_in_daemon_thread
from app.core.servers.ollama import OllamaHolder, keep_alive_value, parse_expires_at
from app.core.units import GiB
from tests.fixtures.servers import canned
from tests.fixtures.servers.ollama_standin import OllamaStandIn, PulledModel
from tests.fixtures.servers.standin import Reply
from tests.fixtures.servers.world import ServerWorld, kinds, poll_for

LLAMA = PulledModel(
    "llama3.1:8b", 8 * GiB, "46e0c10c039e019119339687c3c1757cc81b9da49709a3b3924863ba87ca666e"
)
QWEN = PulledModel("qwen2.5:3b", 2 * GiB, "845dbda0ea48ed749caafd9e6037047aa19acfcfd82e704d7ca97d631a0b697e")


@pytest.fixture
def ollama(world: ServerWorld) -> OllamaStandIn:
    runners = world.runners("ollama", free_delay_s=1.5)
    standin = OllamaStandIn(runners, [LLAMA, QWEN], wall_clock=world.wall_clock)
    world.add(standin)
    return standin


def make_holder(world: ServerWorld, standin: OllamaStandIn, keep_alive: str = "10m") -> OllamaHolder:
    holder = world.holder(OllamaHolder, standin, standin.runners.processes, keep_alive=keep_alive)
    assert isinstance(holder, OllamaHolder)
    return holder


# --- the documented responses, verbatim ----------------------------------------------------------


class VerbatimOllama(OllamaStandIn):
    """Answers /api/ps with the documented example exactly."""

    def route(self, method: str, path: str, body: object, headers: dict[str, str]) -> Reply:
        if method == "GET" and path == "/api/ps":
            return Reply.json(copy.deepcopy(canned.OLLAMA_PS_EXAMPLE))
        return super().route(method, path, body, headers)


def test_the_documented_ps_example_is_listed_as_resident(world: ServerWorld) -> None:
    standin = world.add(VerbatimOllama(world.runners("ollama"), [], wall_clock=world.wall_clock))
    taken_at = dt.datetime.fromisoformat(canned.OLLAMA_PS_EXAMPLE_TAKEN_AT).timestamp()
    holder = world.holder(OllamaHolder, standin, list, wall_clock=lambda: taken_at)
    assert holder.poll() == []
    (model,) = holder.models()
    example = canned.OLLAMA_PS_EXAMPLE["models"][0]
    assert model.name == example["name"]
    assert model.size_bytes == example["size_vram"]
    assert model.digest == example["digest"]
    assert model.state == ModelState.RESIDENT
    assert model.holder == "ollama"


def test_a_model_whose_expiry_has_passed_is_being_unloaded_not_resident(world: ServerWorld) -> None:
    """The same documented entry, an hour after its expires_at: Ollama lists it while it stops."""
    standin = world.add(VerbatimOllama(world.runners("ollama"), [], wall_clock=world.wall_clock))
    later = dt.datetime.fromisoformat(canned.OLLAMA_PS_EXAMPLE["models"][0]["expires_at"]).timestamp() + 3600
    holder = world.holder(OllamaHolder, standin, list, wall_clock=lambda: later)
    holder.poll()
    assert holder.models() == []


def test_the_stand_in_answers_in_the_documented_shapes(world: ServerWorld, ollama: OllamaStandIn) -> None:
    client = JsonHttpClient(ollama.url)
    loaded = client.post_json("/api/generate", canned.OLLAMA_LOAD_REQUEST | {"model": LLAMA.name})
    assert set(loaded) == set(canned.OLLAMA_LOAD_RESPONSE) and loaded["done"] is True
    ps = client.get_json("/api/ps")
    assert set(ps["models"][0]) == set(canned.OLLAMA_PS_EXAMPLE["models"][0])
    assert ps["models"][0]["size_vram"] == LLAMA.size_bytes
    unloaded = client.post_json("/api/generate", canned.OLLAMA_UNLOAD_REQUEST | {"model": LLAMA.name})
    assert set(unloaded) == set(canned.OLLAMA_UNLOAD_RESPONSE) and unloaded["done_reason"] == "unload"
    # the quirk: the answer came, the memory has not: the runner still holds it
    assert ollama.runners.held_bytes() == LLAMA.size_bytes


# --- eviction, verified ------------------------------------------------------------------------


def test_evict_waits_until_the_runner_has_really_freed_the_memory(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    ollama.client_load(LLAMA.name)
    holder = make_holder(world, ollama)
    holder.poll()
    (model,) = holder.models()
    assert model.state == ModelState.RESIDENT and model.gpu == 0
    assert holder.pids() == ollama.runners.pids() and len(holder.pids()) == 1
    free_before = world.free_bytes()
    started = world.clock()

    events = holder.evict([LLAMA.name], "game")

    # Ollama answered at once; the memory came back 1.5 simulated seconds later, and evict waited for it
    assert world.clock() - started == pytest.approx(1.5, abs=0.11)
    assert world.free_bytes() - free_before == LLAMA.size_bytes
    (freed,) = kinds(list(events), "VramDeallocated")
    assert freed.model == LLAMA.name and freed.bytes == LLAMA.size_bytes
    assert freed.residue_bytes == 0 and freed.reason == "game"
    (model,) = holder.models()
    assert model.state == ModelState.EVICTED and model.size_bytes == LLAMA.size_bytes
    assert ollama.bodies("POST", "/api/generate")[-1] == {"model": LLAMA.name, "keep_alive": 0}


def test_memory_a_runner_keeps_is_reported_with_who_holds_it(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    ollama.runners.residue_bytes = 300 * 2**20  # the runner leaks 300 MiB
    ollama.client_load(LLAMA.name)
    holder = make_holder(world, ollama)
    holder.poll()
    started = world.clock()
    (freed,) = kinds(list(holder.evict([LLAMA.name], "game")), "VramDeallocated")
    assert world.clock() - started == pytest.approx(5.0, abs=0.11)  # waited the whole verification timeout
    assert freed.residue_bytes == 300 * 2**20
    assert freed.residue_by is not None and "ollama (pid 500" in freed.residue_by


def test_evicting_one_of_two_models_waits_for_that_ones_memory(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    ollama.client_load(LLAMA.name)
    ollama.client_load(QWEN.name)
    holder = make_holder(world, ollama)
    holder.poll()
    assert {m.name for m in holder.models()} == {LLAMA.name, QWEN.name}
    free_before = world.free_bytes()
    (freed,) = kinds(list(holder.evict([QWEN.name], "pressure")), "VramDeallocated")
    assert world.free_bytes() - free_before == QWEN.size_bytes
    assert freed.residue_bytes == 0
    states = {m.name: m.state for m in holder.models()}
    assert states == {LLAMA.name: ModelState.RESIDENT, QWEN.name: ModelState.EVICTED}


def test_unload_of_a_model_ollama_no_longer_has_is_not_an_error(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    ollama.client_load(LLAMA.name)
    holder = make_holder(world, ollama)
    holder.poll()
    ollama.library.pop(LLAMA.name)  # `ollama rm` meanwhile: the unload answers 404
    events = holder.evict([LLAMA.name], "user")
    assert kinds(list(events), "EngineError") == []
    assert holder.models()[0].state == ModelState.EVICTED


# --- restore ---------------------------------------------------------------------------------------


def test_restore_preloads_with_the_configured_keep_alive(world: ServerWorld, ollama: OllamaStandIn) -> None:
    ollama.client_load(LLAMA.name)
    holder = make_holder(world, ollama, keep_alive="-1")
    holder.poll()
    holder.evict([LLAMA.name], "game")
    world.clock.advance(1.0)

    holder.start_load(LLAMA.name)
    assert holder.models()[0].state == ModelState.LOADING
    events = poll_for(holder, world, 0.2)

    assert ollama.preload_keep_alives()[-1] == -1  # "-1" sent as the number Ollama reads as "for ever"
    (allocated,) = kinds(events, "VramAllocated")
    assert allocated.model == LLAMA.name and allocated.bytes == LLAMA.size_bytes
    assert holder.models()[0].state == ModelState.RESIDENT
    assert ollama.vram_of(LLAMA.name) == LLAMA.size_bytes


def test_a_restore_ollama_refuses_is_a_failed_model_with_its_reason(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    holder = make_holder(world, ollama)
    holder.start_load("no-such-model:1b")
    events = holder.poll()
    (failed,) = kinds(list(events), "VramAllocationFailed")
    assert "not found, try pulling it first" in failed.message
    (model,) = holder.models()
    assert model.state == ModelState.FAILED and "404" in (model.last_error or "")


def test_keep_alive_values_are_sent_as_ollama_reads_them() -> None:
    assert keep_alive_value("5m") == "5m"
    assert keep_alive_value("1h30m") == "1h30m"
    assert keep_alive_value("-1") == -1
    assert keep_alive_value(" 300 ") == 300


def test_expires_at_with_nanoseconds_and_offsets_parses() -> None:
    assert parse_expires_at("2024-06-04T14:38:31.83753-07:00") == pytest.approx(1717537111.83753)
    assert parse_expires_at("2025-01-01T00:00:00.123456789Z") == pytest.approx(1735689600.123456)
    assert parse_expires_at("0001-01-01T00:00:00Z") is None  # Go's zero time: unknown, not expired
    assert parse_expires_at("soon") is None and parse_expires_at(None) is None


# --- what users cannot see elsewhere -----------------------------------------------------------------


def test_a_model_partly_on_the_cpu_is_warned_about_once(world: ServerWorld, ollama: OllamaStandIn) -> None:
    world.sim.allocate(0, 4_999_999, "blender", 6 * GiB)  # something else holds half the card
    ollama.client_load(LLAMA.name)
    holder = make_holder(world, ollama)
    events = poll_for(holder, world, 6.0)
    (warning,) = kinds(events, "ModelPartlyOnCpu")
    assert warning.model == LLAMA.name and warning.size_bytes == LLAMA.size_bytes
    assert 0 < warning.vram_bytes < warning.size_bytes
    assert "runs partly on the CPU" in warning.describe()


def test_a_preload_runs_off_the_engine_thread(world: ServerWorld, ollama: OllamaStandIn) -> None:
    holder = world.holder(
        OllamaHolder, ollama, ollama.runners.processes, run_in_background=run_in_daemon_thread
    )
    holder.start_load(LLAMA.name)
    assert holder.models()[0].state == ModelState.LOADING  # start_load returned before Ollama answered
    events: list[Event] = []
    deadline = time.monotonic() + 5.0
    while not kinds(events, "VramAllocated") and time.monotonic() < deadline:
        events.extend(holder.poll())
        world.clock.advance(0.1)
        time.sleep(0.01)
    (allocated,) = kinds(events, "VramAllocated")
    assert allocated.model == LLAMA.name
    assert ollama.preload_keep_alives() == ["5m"]
