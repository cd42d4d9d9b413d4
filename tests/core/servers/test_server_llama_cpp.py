"""The llama.cpp router-mode adapter against its stand-in and the README's documented responses."""

from __future__ import annotations

import copy

import pytest

from app.core.holders import ModelState
from app.core.servers.base import JsonHttpClient
from app.core.servers.llama_cpp import LlamaCppHolder
from app.core.servers.runners import RunnerProcess
from app.core.units import GiB
from tests.fixtures.servers import canned
from tests.fixtures.servers.llama_cpp_standin import LlamaCppRouterStandIn
from tests.fixtures.servers.standin import Reply
from tests.fixtures.servers.world import ServerWorld, kinds, poll_for

GEMMA = "ggml-org/gemma-3-4b-it-GGUF:Q4_K_M"
GEMMA_PATH = "/models/gemma-3-4b-it-Q4_K_M.gguf"
QWEN = "Qwen3-8B-Q4_K_M"
QWEN_PATH = "/models/Qwen3-8B-Q4_K_M.gguf"


@pytest.fixture
def router(world: ServerWorld) -> LlamaCppRouterStandIn:
    runners = world.runners("llama-server", free_delay_s=0.8)
    standin = LlamaCppRouterStandIn(runners, {GEMMA: (GEMMA_PATH, 3 * GiB), QWEN: (QWEN_PATH, 6 * GiB)})
    world.add(standin)
    return standin


def make_holder(world: ServerWorld, router: LlamaCppRouterStandIn) -> LlamaCppHolder:
    holder = world.holder(LlamaCppHolder, router, router.runners.processes)
    assert isinstance(holder, LlamaCppHolder)
    return holder


class VerbatimRouter(LlamaCppRouterStandIn):
    """GET /models answers the README's example, with each documented status in turn."""

    status: dict[str, object] = canned.LLAMA_CPP_STATUS_LOADED

    def route(self, method: str, path: str, body: object, headers: dict[str, str]) -> Reply:
        if method == "GET" and path == "/models":
            example = copy.deepcopy(canned.LLAMA_CPP_MODELS_EXAMPLE)
            example["data"][0]["status"] = copy.deepcopy(self.status)
            return Reply.json(example)
        return super().route(method, path, body, headers)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (canned.LLAMA_CPP_STATUS_LOADED, ModelState.RESIDENT),
        (canned.LLAMA_CPP_STATUS_LOADING, ModelState.LOADING),
        (canned.LLAMA_CPP_STATUS_UNLOADED, None),
        (canned.LLAMA_CPP_STATUS_FAILED, None),
        (canned.LLAMA_CPP_STATUS_SLEEPING, None),
    ],
)
def test_the_documented_models_answer_in_every_documented_status(
    world: ServerWorld, status: dict[str, object], state: ModelState | None
) -> None:
    standin = VerbatimRouter(world.runners("llama-server"), {})
    standin.status = status
    world.add(standin)
    example = canned.LLAMA_CPP_MODELS_EXAMPLE["data"][0]
    instance = RunnerProcess(
        5_900_001, "llama-server", ("llama-server", "--model", example["path"], "--port", "1")
    )
    world.sim.allocate(0, instance.pid, "llama-server", 3 * GiB)
    holder = world.holder(LlamaCppHolder, standin, lambda: [instance])
    holder.poll()
    listed = {m.name: m for m in holder.models()}
    if state is None:
        assert listed == {}
        return
    model = listed[example["id"]]
    assert model.state == state
    # the router gives no size: NVML does, through the instance whose arguments name the model's path
    assert model.size_bytes == 3 * GiB and model.gpu == 0


def test_the_stand_in_answers_in_the_documented_shapes(router: LlamaCppRouterStandIn) -> None:
    client = JsonHttpClient(router.url)
    assert client.post_json("/models/load", canned.LLAMA_CPP_LOAD_REQUEST) == canned.LLAMA_CPP_SUCCESS
    listed = client.get_json("/models")["data"]
    assert all(set(canned.LLAMA_CPP_MODELS_EXAMPLE["data"][0]) <= set(entry) for entry in listed)
    assert {e["id"]: e["status"]["value"] for e in listed} == {GEMMA: "loading", QWEN: "unloaded"}
    assert client.post_json("/models/unload", canned.LLAMA_CPP_UNLOAD_REQUEST) == canned.LLAMA_CPP_SUCCESS


def test_evict_and_restore_one_model_with_its_own_instance(
    world: ServerWorld, router: LlamaCppRouterStandIn
) -> None:
    router.client_load(GEMMA)
    router.client_load(QWEN)
    holder = make_holder(world, router)
    poll_for(holder, world, 2.5)  # the router loads both in 1 s; the adapter looks every 2 s
    states = {m.name: (m.state, m.size_bytes) for m in holder.models()}
    assert states == {GEMMA: (ModelState.RESIDENT, 3 * GiB), QWEN: (ModelState.RESIDENT, 6 * GiB)}
    assert holder.pids() == router.runners.pids() and len(holder.pids()) == 2
    free_before = world.free_bytes()

    (freed,) = kinds(list(holder.evict([QWEN], "pressure")), "VramDeallocated")

    assert world.free_bytes() - free_before == 6 * GiB  # exactly QWEN's instance, verified
    assert freed.residue_bytes == 0 and freed.bytes == 6 * GiB
    assert router.bodies("POST", "/models/unload") == [{"model": QWEN}]
    assert {m.name: m.state for m in holder.models()}[QWEN] == ModelState.EVICTED

    holder.start_load(QWEN)
    events = poll_for(holder, world, 0.5)
    assert {m.name: m.state for m in holder.models()}[QWEN] == ModelState.LOADING  # "loading" for 1 s
    events += poll_for(holder, world, 2.5)
    (allocated,) = kinds(events, "VramAllocated")
    assert allocated.model == QWEN and allocated.bytes == 6 * GiB
    assert router.bodies("POST", "/models/load") == [{"model": QWEN}]


def test_an_instance_that_fails_to_start_is_a_failed_model(
    world: ServerWorld, router: LlamaCppRouterStandIn
) -> None:
    holder = make_holder(world, router)
    router.fail_next_load = True
    holder.start_load(GEMMA)
    poll_for(holder, world, 4.0)
    (model,) = [m for m in holder.models() if m.name == GEMMA]
    assert model.state == ModelState.FAILED and "does not list it" in (model.last_error or "")


def test_a_model_a_client_loads_while_held_is_evicted_again(
    world: ServerWorld, router: LlamaCppRouterStandIn
) -> None:
    holder = make_holder(world, router)
    holder.poll()
    holder.set_hold("game")
    router.client_load(GEMMA)
    events = poll_for(holder, world, 5.0)
    reloads = kinds(events, "ModelReloadedWhileHeld")
    assert [r.model for r in reloads] == [GEMMA] and reloads[0].reason == "game"
    assert reloads[0].evicted_again
    assert router.bodies("POST", "/models/unload") == [{"model": GEMMA}]
    assert router.runners.held_bytes() == 0
    assert {m.name: m.state for m in holder.models()} == {GEMMA: ModelState.EVICTED}
