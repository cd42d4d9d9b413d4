"""The llama-swap adapter against its stand-in and the documented (source) responses."""

from __future__ import annotations

import copy

from app.core.holders import ModelState
from app.core.servers.base import JsonHttpClient
from app.core.servers.llama_swap import LlamaSwapHolder
from app.core.servers.runners import RunnerProcess
from app.core.units import GiB
from tests.fixtures.servers import canned
from tests.fixtures.servers.llama_swap_standin import LlamaSwapStandIn
from tests.fixtures.servers.standin import Reply
from tests.fixtures.servers.world import ServerWorld, kinds, poll_for

QWEN = "qwen2.5-7b"
CODER = "bartowski/qwen2.5-coder-1.5b"  # llama-swap model ids may contain a slash


def make(
    world: ServerWorld, *, matrix: bool = False, start_s: float = 0.0
) -> tuple[LlamaSwapStandIn, LlamaSwapHolder]:
    runners = world.runners("llama-server", free_delay_s=1.0)
    standin = LlamaSwapStandIn(runners, {QWEN: 5 * GiB, CODER: 2 * GiB}, matrix=matrix, start_s=start_s)
    world.add(standin)
    holder = world.holder(LlamaSwapHolder, standin, runners.processes)
    assert isinstance(holder, LlamaSwapHolder)
    return standin, holder


class VerbatimSwap(LlamaSwapStandIn):
    def route(self, method: str, path: str, body: object, headers: dict[str, str]) -> Reply:
        if method == "GET" and path == "/running":
            return Reply.json(copy.deepcopy(canned.LLAMA_SWAP_RUNNING_EXAMPLE))
        return super().route(method, path, body, headers)


def test_the_documented_running_answer_is_resident_and_matched_to_its_upstream(world: ServerWorld) -> None:
    standin = world.add(VerbatimSwap(world.runners("llama-server"), {}))
    example = canned.LLAMA_SWAP_RUNNING_EXAMPLE["running"][0]
    upstream = RunnerProcess(5_800_001, "llama-server", tuple(example["cmd"].split()))
    other = RunnerProcess(5_800_002, "llama-server", ("llama-server", "--port", "10002"))
    world.sim.allocate(0, upstream.pid, "llama-server", 4 * GiB)
    world.sim.allocate(0, other.pid, "llama-server", 1 * GiB)
    holder = world.holder(LlamaSwapHolder, standin, lambda: [upstream, other])
    holder.poll()
    (model,) = holder.models()
    assert model.name == example["model"] and model.state == ModelState.RESIDENT
    assert model.size_bytes == 4 * GiB  # the upstream on the proxy's port 10001, not the other one
    assert holder.pids() == {upstream.pid, other.pid}


def test_the_stand_in_answers_in_the_documented_shapes(world: ServerWorld) -> None:
    standin, _ = make(world)
    client = JsonHttpClient(standin.url)
    assert client.request("GET", f"/upstream/{QWEN}/").status == 200
    (entry,) = client.get_json("/running")["running"]
    assert tuple(entry) == canned.LLAMA_SWAP_RUNNING_KEYS and entry["state"] == "ready"
    one = client.request("POST", f"/api/models/unload/{QWEN}")
    assert one.body.decode() == canned.LLAMA_SWAP_UNLOAD_ONE_RESPONSE
    assert client.post_json("/api/models/unload", None) == canned.LLAMA_SWAP_UNLOAD_ALL_RESPONSE
    missing = client.request("POST", "/api/models/unload/nope", ok_statuses=(404,))
    assert missing.json("unload") == {"error": canned.LLAMA_SWAP_NOT_FOUND_MESSAGE}


def test_evict_and_restore_through_the_upstream_path(world: ServerWorld) -> None:
    standin, holder = make(world)
    standin.client_load(CODER)
    holder.poll()
    (model,) = holder.models()
    assert model.name == CODER and model.size_bytes == 2 * GiB
    free_before = world.free_bytes()

    (freed,) = kinds(list(holder.evict([CODER], "game")), "VramDeallocated")

    assert world.free_bytes() - free_before == 2 * GiB and freed.residue_bytes == 0
    assert standin.count("POST", "/api/models/unload/bartowski/qwen2.5-coder-1.5b") == 1
    holder.start_load(CODER)
    events = poll_for(holder, world, 0.3)
    assert standin.count("GET", "/upstream/bartowski/qwen2.5-coder-1.5b/") == 1
    assert [e.model for e in kinds(events, "VramAllocated")] == [CODER]
    assert holder.models()[0].state == ModelState.RESIDENT


def test_in_matrix_mode_starting_is_loading_and_stopping_is_gone(world: ServerWorld) -> None:
    standin, holder = make(world, matrix=True, start_s=3.0)
    standin.client_load(QWEN)
    poll_for(holder, world, 1.0)
    assert [(m.name, m.state) for m in holder.models()] == [(QWEN, ModelState.LOADING)]
    poll_for(holder, world, 3.5)
    assert [(m.name, m.state) for m in holder.models()] == [(QWEN, ModelState.RESIDENT)]
    standin.route("POST", f"/api/models/unload/{QWEN}", None, {})  # someone else unloads it
    poll_for(holder, world, 2.5)
    assert holder.models() == []  # "stopping" is on its way out, then gone: the server's own doing


def test_unloading_a_model_llama_swap_does_not_know_is_not_an_error(world: ServerWorld) -> None:
    standin, holder = make(world)
    standin.client_load(QWEN)
    holder.poll()
    standin.processes.pop(QWEN)  # the config was reloaded without it
    events = holder.evict([QWEN], "user")
    assert kinds(list(events), "EngineError") == []
    assert holder.models()[0].state == ModelState.EVICTED
