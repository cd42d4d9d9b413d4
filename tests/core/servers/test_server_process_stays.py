"""The adapters of servers whose process stays after a free (LM Studio, text-generation-webui, vLLM's sleep
mode, SGLang's memory saver), each against its protocol-faithful stand-in on loopback and the simulated
GPU: what they list, a free verified through NVML that expects back the model's bytes (not the process),
residue, bringing back, a client reloading during a game, and the server down, slow, answering garbage,
missing the flag that lets it free memory, or asking for an API key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app.core.holders import ModelState
from app.core.servers.holder import ServerHolder, run_at_once, run_in_daemon_thread
from app.core.servers.lm_studio import LmStudioHolder
from app.core.servers.process_stays import ProcessStaysHolder
from app.core.servers.sglang import SglangHolder
from app.core.servers.text_generation_webui import TextGenerationWebuiHolder
from app.core.servers.vllm import VllmHolder
from app.core.settings import ServerConfig
from app.core.units import GiB, MiB
from tests.fixtures.servers.process_stays_standins import (
    LmStudioStandIn,
    SglangStandIn,
    StayingProcess,
    StayingStandIn,
    TextGenerationWebuiStandIn,
    VllmStandIn,
)
from tests.fixtures.servers.standin import FAKE_PID_BASE
from tests.fixtures.servers.world import ServerWorld, kinds, poll_for

WEIGHTS = 6 * GiB
QWEN = "qwen/qwen3-8b"


@dataclass
class App:
    """One app under test: its stand-in with the model loaded, its adapter, and how a client loads."""

    standin: StayingStandIn
    cls: type[ProcessStaysHolder]
    model: str
    client_load: Callable[[], None]
    load_request: tuple[str, object]  # (path, body) the bring-back sends

    @property
    def process(self) -> StayingProcess:
        return self.standin.process


def staying(world: ServerWorld, name: str, kept: int, cmdline: tuple[str, ...]) -> StayingProcess:
    return StayingProcess(
        world.sim, world.clock, pid=FAKE_PID_BASE + 1, name=name, cmdline=cmdline, kept_bytes=kept
    )


def make_app(world: ServerWorld, kind: str, *, token: str = "", **flags: Any) -> App:
    app: App
    if kind == "lm_studio":
        process = staying(world, "node", 512 * MiB, ("/home/u/.lmstudio/.internal/utils/node",))
        lm = LmStudioStandIn(process, {QWEN: WEIGHTS, "google/gemma-3-4b": 3 * GiB}, token=token)
        lm.loaded[QWEN] = 8192
        process.hold(WEIGHTS)
        app = App(lm, LmStudioHolder, QWEN, lambda: lm.client_load(QWEN), ("/api/v1/models/load", None))
    elif kind == "text_generation_webui":
        process = staying(world, "python3", 512 * MiB, ("python3", "server.py", "--api"))
        tg = TextGenerationWebuiStandIn(process, {"Qwen3-8B-Q4_K_M.gguf": WEIGHTS}, token=token)
        tg.client_load("Qwen3-8B-Q4_K_M.gguf")
        body = {"model_name": "Qwen3-8B-Q4_K_M.gguf"}
        app = App(
            tg,
            TextGenerationWebuiHolder,
            "Qwen3-8B-Q4_K_M.gguf",
            lambda: tg.client_load("Qwen3-8B-Q4_K_M.gguf"),
            ("/v1/internal/model/load", body),
        )
    elif kind == "vllm":
        process = staying(world, "VLLM::EngineCor", 1 * GiB, ("VLLM::EngineCore",))
        vl = VllmStandIn(process, "Qwen/Qwen3-8B", WEIGHTS, token=token, **flags)
        app = App(vl, VllmHolder, "Qwen/Qwen3-8B", vl.client_wake_up, ("/wake_up", None))
    else:
        process = staying(world, "sglang::schedul", 1 * GiB, ("sglang::scheduler",))
        sg = SglangStandIn(process, "Qwen/Qwen3-8B", WEIGHTS, token=token, **flags)
        app = App(sg, SglangHolder, "Qwen/Qwen3-8B", sg.client_resume, ("/resume_memory_occupation", {}))
    world.add(app.standin)
    return app


def make_holder(
    world: ServerWorld, app: App, *, api_key: str = "", background: Callable[..., Any] = run_at_once
) -> ServerHolder:
    config = ServerConfig(kind=app.cls.name, url=app.standin.url, api_key=api_key)
    return app.cls(
        config,
        backend=world.backend,
        find_runners=app.process.processes,
        clock=world.clock,
        wall_clock=world.wall_clock,
        sleep=world.sleep,
        run_in_background=background,
    )


KINDS = ["lm_studio", "text_generation_webui", "vllm", "sglang"]


@pytest.fixture(params=KINDS)
def app(request: pytest.FixtureRequest, world: ServerWorld) -> App:
    return make_app(world, request.param)


def states(holder: ServerHolder) -> dict[str, ModelState]:
    return {m.name: m.state for m in holder.models()}


# --- list, free (verified), residue, bring back ---------------------------------------------------


def test_the_loaded_model_is_listed_with_its_own_bytes(world: ServerWorld, app: App) -> None:
    holder = make_holder(world, app)
    assert holder.poll() == []
    (model,) = holder.models()
    assert model.name == app.model and model.state == ModelState.RESIDENT and model.gpu == 0
    assert model.size_bytes == WEIGHTS  # the weights, not the process's CUDA context
    assert holder.pids() == {app.process.pid}


def test_a_free_is_verified_and_the_process_keeps_only_its_context(world: ServerWorld, app: App) -> None:
    holder = make_holder(world, app)
    holder.poll()
    free_before = world.free_bytes()
    started = world.clock()

    (freed,) = kinds(list(holder.evict([app.model], "game")), "VramDeallocated")

    assert world.free_bytes() - free_before == WEIGHTS
    assert freed.residue_bytes == 0 and freed.bytes == WEIGHTS and freed.reason == "game"
    # it waited for the memory (0.5 s), not for a process that never exits (the 5 s timeout)
    assert world.clock() - started == pytest.approx(0.5, abs=0.11)
    assert app.process.held_bytes() == app.process.kept_bytes  # the process is still there
    assert states(holder) == {app.model: ModelState.EVICTED}
    poll_for(holder, world, 3.0)  # later listings do not bring it back as resident
    assert states(holder) == {app.model: ModelState.EVICTED}


def test_weights_the_process_keeps_are_reported_as_residue(world: ServerWorld, app: App) -> None:
    app.process.residue_bytes = 300 * MiB
    holder = make_holder(world, app)
    holder.poll()
    (freed,) = kinds(list(holder.evict([app.model], "game")), "VramDeallocated")
    assert freed.residue_bytes == 300 * MiB
    assert freed.residue_by == f"{app.process.name} (pid {app.process.pid})"


def test_bring_back_loads_the_same_model(world: ServerWorld, app: App) -> None:
    holder = make_holder(world, app)
    holder.poll()
    holder.evict([app.model], "game")
    holder.start_load(app.model)
    assert states(holder) == {app.model: ModelState.LOADING}
    events = poll_for(holder, world, 0.3)
    (allocated,) = kinds(events, "VramAllocated")
    assert allocated.model == app.model and allocated.bytes == WEIGHTS
    assert states(holder) == {app.model: ModelState.RESIDENT}
    assert app.process.held_bytes() == app.process.kept_bytes + WEIGHTS
    path, body = app.load_request
    sent = app.standin.bodies("POST", path)
    assert len(sent) == 1 and (body is None or sent[0] == body)


def test_lm_studio_brings_an_instance_back_with_its_own_load_config(world: ServerWorld) -> None:
    app = make_app(world, "lm_studio")
    holder = make_holder(world, app)
    holder.poll()
    holder.evict([QWEN], "game")
    holder.start_load(QWEN)
    holder.poll()
    (sent,) = app.standin.bodies("POST", "/api/v1/models/load")
    assert sent == {
        "model": QWEN,
        "context_length": 8192,
        "eval_batch_size": 512,
        "flash_attention": True,
        "offload_kv_cache_to_gpu": True,
    }


def test_a_client_reloading_during_a_game_is_freed_again(world: ServerWorld, app: App) -> None:
    holder = make_holder(world, app)
    holder.poll()
    holder.evict([app.model], "game")
    holder.set_hold("game")
    app.client_load()
    assert app.process.weights_bytes == WEIGHTS
    events = poll_for(holder, world, 3.0)
    (reload,) = kinds(events, "ModelReloadedWhileHeld")
    assert reload.model == app.model and reload.evicted_again and reload.reason == "game"
    (freed,) = kinds(events, "VramDeallocated")
    assert freed.reason == "game_reload" and freed.residue_bytes == 0
    assert app.process.held_bytes() == app.process.kept_bytes
    assert states(holder) == {app.model: ModelState.EVICTED}


def test_what_the_process_keeps_is_learned_while_it_holds_no_model(world: ServerWorld) -> None:
    """vLLM asleep keeps 1.5 GiB (graphs, NCCL), not the 1 GiB guessed: the first free says 0.5 GiB stayed;
    from then on the model's size and its frees are exact."""
    app = make_app(world, "vllm")
    holder = make_holder(world, app)
    world.sim.allocate(0, app.process.pid, app.process.name, 512 * MiB)  # it keeps 1.5 GiB in all
    holder.poll()
    assert holder.models()[0].size_bytes == WEIGHTS + 512 * MiB  # 1 GiB guessed
    (freed,) = kinds(list(holder.evict([app.model], "game")), "VramDeallocated")
    assert freed.residue_bytes == 512 * MiB
    poll_for(holder, world, 2.5)  # asleep: it learns what stays
    holder.start_load(app.model)
    poll_for(holder, world, 2.5)
    assert holder.models()[0].size_bytes == WEIGHTS
    (freed,) = kinds(list(holder.evict([app.model], "game")), "VramDeallocated")
    assert freed.residue_bytes == 0


# --- down, slow, garbage ------------------------------------------------------------------------


def test_an_app_that_is_down_is_one_event_with_the_reason(world: ServerWorld, app: App) -> None:
    app.standin.stop()
    holder = make_holder(world, app)
    events = poll_for(holder, world, 30.0)
    (down,) = kinds(events, "ServerDown")
    assert "connection refused" in down.message
    if app.cls is TextGenerationWebuiHolder:
        assert "--api" in down.message  # its API listens only when started with --api
    assert app.standin.count() == 0 and holder.models() == []


def test_an_app_answering_garbage_is_shown_as_such(world: ServerWorld, app: App) -> None:
    app.standin.mode = "garbage"
    holder = make_holder(world, app)
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "not JSON" in down.message and holder.models() == []


def test_a_slow_app_never_makes_the_engine_wait(world: ServerWorld, app: App) -> None:
    holder = make_holder(world, app, background=run_in_daemon_thread)
    deadline = time.monotonic() + 5.0
    while not holder.models() and time.monotonic() < deadline:
        holder.poll()
        time.sleep(0.01)
    assert states(holder) == {app.model: ModelState.RESIDENT}
    app.standin.delay_s = 1.0  # every answer now takes a second
    started = time.monotonic()
    holder.evict([app.model], "game")
    holder.poll()
    holder.start_load("another")
    holder.poll()
    assert time.monotonic() - started < 0.2  # the requests run on their own threads
    app.standin.delay_s = 0.0


# --- flags and keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "flags", "words"),
    [
        ("vllm", {"dev_mode": False}, ["VLLM_SERVER_DEV_MODE=1", "--enable-sleep-mode"]),
        ("vllm", {"sleep_mode": False}, ["without --enable-sleep-mode"]),
        ("sglang", {"memory_saver": False}, ["--enable-memory-saver"]),
    ],
)
def test_a_server_without_the_flag_to_free_memory_says_which_and_is_not_managed(
    world: ServerWorld, kind: str, flags: dict[str, bool], words: list[str]
) -> None:
    app = make_app(world, kind, **flags)
    holder = make_holder(world, app)
    events = poll_for(holder, world, 10.0)
    (down,) = kinds(events, "ServerDown")
    assert all(w in down.message for w in words)
    assert holder.models() == [] and holder.pids() == set()  # not ours to free: not managed either
    status = holder.server_status()
    assert status.up is False and all(w in (status.message or "") for w in words)


@pytest.mark.parametrize("kind", KINDS)
def test_an_app_asking_for_a_key_says_to_set_api_key_and_gets_it(world: ServerWorld, kind: str) -> None:
    app = make_app(world, kind, token="sk-lm-1234")
    holder = make_holder(world, app)
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "HTTP 401" in down.message and 'api_key = "..."' in down.message

    wrong = make_holder(world, app, api_key="nope")
    (down,) = kinds(poll_for(wrong, world, 1.0), "ServerDown")
    assert "refused the api_key" in down.message

    right = make_holder(world, app, api_key="sk-lm-1234")
    right.poll()
    assert states(right) == {app.model: ModelState.RESIDENT}
    assert app.standin.received[-1].headers["authorization"] == "Bearer sk-lm-1234"


# --- quirks -------------------------------------------------------------------------------------


def test_text_generation_webui_idle_unload_keeps_the_name_but_not_the_model(world: ServerWorld) -> None:
    """--idle-timeout frees the model and keeps its name; our unload then does nothing: not resident."""
    app = make_app(world, "text_generation_webui")
    holder = make_holder(world, app)
    holder.poll()
    app.standin.idle_unload()  # type: ignore[attr-defined]
    holder.set_hold("game")
    events = list(holder.evict([app.model], "game")) + poll_for(holder, world, 6.0)
    assert kinds(events, "ModelReloadedWhileHeld") == []  # the kept name is not a reload, no loop
    assert app.standin.count("POST", "/v1/internal/model/unload") == 1
    app.client_load()  # a generation request reloads it: NVML sees it
    events = poll_for(holder, world, 3.0)
    assert [r.model for r in kinds(events, "ModelReloadedWhileHeld")] == [app.model]
    assert app.process.held_bytes() == app.process.kept_bytes
