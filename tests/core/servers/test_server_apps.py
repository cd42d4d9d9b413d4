"""The adapters for ComfyUI, A1111/Forge, InvokeAI, LocalAI and KoboldCpp against their protocol-faithful
stand-ins (tests/fixtures/servers/app_standins.py) on the simulated GPU: what each holds, the free verified
through NVML (and residue), bring back or "comes back on next use", a client reloading during a game, the
app down, slow or answering garbage, and the message naming a missing flag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app.core.config import SERVER_KINDS
from app.core.holders import ModelState
from app.core.servers import ADAPTERS
from app.core.servers.comfyui import ComfyUIHolder
from app.core.servers.holder import ServerHolder, run_in_daemon_thread
from app.core.servers.invokeai import InvokeAIHolder
from app.core.servers.koboldcpp import KoboldCppHolder
from app.core.servers.localai import LocalAIHolder
from app.core.servers.runners import port_argument
from app.core.servers.webui import WebUIHolder
from app.core.units import GiB
from tests.fixtures.servers.app_standins import (
    CONTEXT_BYTES,
    AppStandIn,
    ComfyUIStandIn,
    InvokeAIStandIn,
    KoboldCppStandIn,
    LocalAIStandIn,
    WebUIStandIn,
)
from tests.fixtures.servers.world import ServerWorld, kinds, poll_for

MISTRAL = ("mistral-7b", 5 * GiB)


@dataclass
class App:
    """One app: how to start its stand-in, make it hold VRAM as a client would, and its adapter."""

    cls: type[ServerHolder]
    make: Callable[[ServerWorld], AppStandIn]
    use: Callable[[AppStandIn], None]  # a client uses it: it holds models
    held_bytes: int


def _comfy(world: ServerWorld) -> AppStandIn:
    return ComfyUIStandIn(world.sim, world.clock, 5_100_000)


def _webui(world: ServerWorld) -> AppStandIn:
    return WebUIStandIn(world.sim, world.clock, 5_200_000)


def _invoke(world: ServerWorld) -> AppStandIn:
    return InvokeAIStandIn(world.sim, world.clock, 5_300_000)


def _localai(world: ServerWorld) -> AppStandIn:
    return LocalAIStandIn(world.sim, world.clock, 5_400_000, models={"mistral-7b": 5 * GiB})


def _kobold(world: ServerWorld) -> AppStandIn:
    admindir = {"mistral.kcpps": MISTRAL, "llama.gguf": ("llama", 4 * GiB)}
    return KoboldCppStandIn(world.sim, world.clock, 5_500_000, admindir=admindir, config_file="mistral.kcpps")


def _use(standin: AppStandIn) -> None:
    if isinstance(standin, ComfyUIStandIn):
        standin.client_prompt(6 * GiB)
    elif isinstance(standin, WebUIStandIn):
        standin.client_generate()
    elif isinstance(standin, InvokeAIStandIn):
        standin.client_invoke("sdxl-unet", 5 * GiB)
    elif isinstance(standin, LocalAIStandIn):
        standin.client_request("mistral-7b")
    # KoboldCpp holds its startup model from the start


APPS = {
    "comfyui": App(ComfyUIHolder, _comfy, _use, 6 * GiB),
    "a1111": App(WebUIHolder, _webui, _use, 2 * GiB),
    "invokeai": App(InvokeAIHolder, _invoke, _use, 5 * GiB),
    "localai": App(LocalAIHolder, _localai, _use, 5 * GiB + CONTEXT_BYTES),
    "koboldcpp": App(KoboldCppHolder, _kobold, _use, 5 * GiB + CONTEXT_BYTES),
}


def settling_sleep(world: ServerWorld) -> Callable[[float], None]:
    """Sleep on the simulated clock and let the stand-ins catch up (KoboldCpp restarts meanwhile)."""

    def sleep(seconds: float) -> None:
        world.clock.advance(seconds)
        world.backend.sample()

    return sleep


def start(world: ServerWorld, kind: str, **options: Any) -> tuple[AppStandIn, ServerHolder]:
    app = APPS[kind]
    standin = world.add(app.make(world))
    options.setdefault("sleep", settling_sleep(world))
    holder = world.holder(app.cls, standin, standin.runners, kind=kind, **options)
    return standin, holder


@pytest.mark.parametrize("kind", sorted(APPS))
def test_every_app_is_a_kind_of_the_settings_and_has_an_adapter(kind: str) -> None:
    assert kind in SERVER_KINDS and ADAPTERS[kind][0] is APPS[kind].cls
    assert ADAPTERS["forge"][0] is WebUIHolder and "forge" in SERVER_KINDS


@pytest.mark.parametrize("kind", sorted(APPS))
def test_what_the_app_holds_is_listed_with_its_vram_and_processes(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    APPS[kind].use(standin)
    holder.poll()
    (item,) = holder.models()
    assert item.state == ModelState.RESIDENT and item.holder == APPS[kind].cls.name
    assert item.size_bytes == pytest.approx(APPS[kind].held_bytes, abs=64 * 2**20)
    assert holder.pids() == {r.pid for r in standin.runners()}


@pytest.mark.parametrize("kind", sorted(APPS))
def test_free_is_verified_through_nvml(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    APPS[kind].use(standin)
    holder.poll()
    (item,) = holder.models()
    free_before = world.free_bytes()
    events = list(holder.evict([item.name], "game"))
    (freed,) = kinds(events, "VramDeallocated")
    assert freed.residue_bytes == 0 and freed.reason == "game"
    assert world.free_bytes() - free_before >= APPS[kind].held_bytes - CONTEXT_BYTES
    assert standin.models_bytes() == 0  # the app really let go, after it answered
    assert holder.models()[0].state == ModelState.EVICTED


@pytest.mark.parametrize("kind", sorted(APPS))
def test_a_client_using_the_app_during_a_game_is_freed_again(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    APPS[kind].use(standin)
    holder.poll()
    holder.evict([m.name for m in holder.models()], "game")
    holder.set_hold("game")
    poll_for(holder, world, 3.0)
    if isinstance(standin, KoboldCppStandIn):  # someone reloads its model through its admin page
        standin._restart("mistral.kcpps")
        settling_sleep(world)(standin.restart_s)  # its restart ends
    else:
        APPS[kind].use(standin)
    events = poll_for(holder, world, 8.0)
    (reload,) = kinds(events, "ModelReloadedWhileHeld")
    assert reload.evicted_again and reload.reason == "game"
    assert standin.models_bytes() == 0


@pytest.mark.parametrize("kind", sorted(APPS))
def test_the_app_down_is_one_event_with_the_reason(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    standin.stop()
    events = poll_for(holder, world, 10.0)
    (down,) = kinds(events, "ServerDown")
    assert "connection refused" in down.message and holder.models() == []


@pytest.mark.parametrize("kind", sorted(APPS))
def test_an_app_answering_garbage_is_shown_as_such(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    standin.mode = "garbage"
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "not JSON" in down.message
    standin.mode = "wrong_shape"
    holder2 = world.holder(APPS[kind].cls, standin, standin.runners, kind=kind)
    assert kinds(poll_for(holder2, world, 1.0), "ServerDown")
    assert holder2.models() == []


@pytest.mark.parametrize("kind", sorted(APPS))
def test_a_slow_app_never_makes_the_engine_wait(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind, run_in_background=run_in_daemon_thread, timeout_s=0.3)
    APPS[kind].use(standin)
    deadline = time.monotonic() + 5
    while not holder.models() and time.monotonic() < deadline:
        holder.poll()
        time.sleep(0.01)
    gate = threading.Event()
    original = standin.route

    def slow(*args: Any) -> Any:
        gate.wait(3)
        return original(*args)

    standin.route = slow  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        holder.evict([m.name for m in holder.models()], "game")
        for _ in range(20):
            holder.poll()
        holder.start_load("anything")
        assert time.monotonic() - started < 0.2  # every call returned at once
    finally:
        gate.set()


# --- bring back -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["comfyui", "invokeai"])
def test_an_app_without_a_load_call_shows_it_comes_back_on_next_use(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    APPS[kind].use(standin)
    holder.poll()
    (item,) = holder.models()
    holder.evict([item.name], "game")
    holder.start_load(item.name)
    events = holder.poll()
    assert kinds(list(events), "VramAllocationFailed") == []
    (item,) = holder.models()
    assert item.state == ModelState.UNLOADED and item.comes_back_on_next_use and item.last_error is None
    assert item.to_json()["comes_back_on_next_use"] is True
    APPS[kind].use(standin)  # the next prompt / invocation
    poll_for(holder, world, 2.5)
    (item,) = holder.models()
    assert item.state == ModelState.RESIDENT and not item.comes_back_on_next_use


@pytest.mark.parametrize("kind", ["a1111", "localai", "koboldcpp"])
def test_bring_back_loads_what_was_freed(world: ServerWorld, kind: str) -> None:
    standin, holder = start(world, kind)
    APPS[kind].use(standin)
    holder.poll()
    (item,) = holder.models()
    holder.evict([item.name], "game")
    assert standin.models_bytes() == 0
    holder.start_load(item.name)
    events = poll_for(holder, world, 3.0)
    (allocated,) = kinds(events, "VramAllocated")
    assert allocated.model == item.name
    assert holder.models()[0].state == ModelState.RESIDENT
    assert standin.models_bytes() > 0


def test_koboldcpp_reloads_the_config_it_was_started_with(world: ServerWorld) -> None:
    standin, holder = start(world, "koboldcpp")
    holder.poll()
    holder.evict(["koboldcpp/mistral-7b"], "game")
    holder.start_load("koboldcpp/mistral-7b")
    poll_for(holder, world, 3.0)
    bodies = standin.bodies("POST", "/api/admin/reload_config")
    assert bodies == [{"filename": "unload_model"}, {"filename": "mistral.kcpps"}]


def test_localai_without_a_load_route_comes_back_on_next_request(world: ServerWorld) -> None:
    standin, holder = start(world, "localai")
    assert isinstance(standin, LocalAIStandIn)
    standin.has_load_route = False
    standin.client_request("mistral-7b")
    holder.poll()
    holder.evict(["mistral-7b"], "game")
    holder.start_load("mistral-7b")
    holder.poll()
    (item,) = holder.models()
    assert item.state == ModelState.UNLOADED and item.comes_back_on_next_use


# --- residue ------------------------------------------------------------------------------------


def test_invokeai_models_in_use_stay_and_are_reported_as_residue(world: ServerWorld) -> None:
    standin, holder = start(world, "invokeai")
    assert isinstance(standin, InvokeAIStandIn)
    standin.client_invoke("sdxl-unet", 5 * GiB)
    standin.client_invoke("sdxl-vae", 1 * GiB, running=True)  # locked by a running invocation
    holder.poll()
    (item,) = holder.models()
    (freed,) = kinds(list(holder.evict([item.name], "game")), "VramDeallocated")
    assert freed.residue_bytes == 1 * GiB
    assert freed.residue_by is not None and "invokeai-web" in freed.residue_by


# --- the missing flag ---------------------------------------------------------------------------


def test_a1111_without_api_says_to_add_it(world: ServerWorld) -> None:
    standin = world.add(WebUIStandIn(world.sim, world.clock, 5_600_000, api=False))
    holder = world.holder(WebUIHolder, standin, standin.runners, kind="a1111")
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "--api" in down.message and "COMMANDLINE_ARGS" in down.message


def test_koboldcpp_without_admin_mode_says_which_flags(world: ServerWorld) -> None:
    admindir = {"m.kcpps": MISTRAL}
    standin = world.add(
        KoboldCppStandIn(world.sim, world.clock, 5_600_000, admin=0, admindir=admindir, config_file="m.kcpps")
    )
    holder = world.holder(KoboldCppHolder, standin, standin.runners)
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "--admin --admindir" in down.message


def test_koboldcpp_with_an_admin_password_needs_api_key(world: ServerWorld) -> None:
    admindir = {"m.kcpps": MISTRAL}
    standin = world.add(
        KoboldCppStandIn(
            world.sim,
            world.clock,
            5_600_000,
            admin=2,
            password="s3cret",
            admindir=admindir,
            config_file="m.kcpps",
        )
    )
    holder = world.holder(KoboldCppHolder, standin, standin.runners)
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "--adminpassword" in down.message and "api_key" in down.message


def test_localai_with_api_keys_names_api_key(world: ServerWorld) -> None:
    standin = world.add(LocalAIStandIn(world.sim, world.clock, 5_600_000, models={}, api_keys=("k1",)))
    holder = world.holder(LocalAIHolder, standin, standin.runners)
    (down,) = kinds(poll_for(holder, world, 1.0), "ServerDown")
    assert "HTTP 401" in down.message and "api_key" in down.message and "LOCALAI_API_KEY" in down.message


def test_the_port_an_app_was_started_with_is_read_from_its_arguments() -> None:
    assert port_argument(("python", "main.py", "--port", "8189")) == 8189
    assert port_argument(("koboldcpp", "--port=5002")) == 5002
    assert port_argument(("invokeai-web",)) is None
