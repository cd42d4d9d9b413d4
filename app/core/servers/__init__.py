"""Adapters for the model servers and AI apps people already run (Ollama, llama.cpp's server in router mode,
llama-swap, ComfyUI, A1111/Forge, InvokeAI, LocalAI, KoboldCpp, ...), behind the same ModelHolder protocol
as the built-in residency. See docs/servers.md."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.gpu.backend import GpuBackend
from app.core.servers.comfyui import ComfyUIHolder
from app.core.servers.generic import CommandHolder, StopStartHolder, SystemdHolder
from app.core.servers.holder import ServedModel, ServerHolder, ServerStatus
from app.core.servers.invokeai import InvokeAIHolder
from app.core.servers.koboldcpp import KoboldCppHolder
from app.core.servers.llama_cpp import LlamaCppHolder
from app.core.servers.llama_swap import LlamaSwapHolder
from app.core.servers.lm_studio import LmStudioHolder
from app.core.servers.localai import LocalAIHolder
from app.core.servers.ollama import OllamaHolder
from app.core.servers.runners import (
    FindRunners,
    RunnerProcess,
    comfyui_processes,
    invokeai_processes,
    koboldcpp_processes,
    llama_server_instances,
    llama_swap_upstreams,
    lm_studio_processes,
    localai_processes,
    ollama_runners,
    sglang_processes,
    text_generation_webui_processes,
    vllm_processes,
    webui_processes,
)
from app.core.servers.sglang import SglangHolder
from app.core.servers.text_generation_webui import TextGenerationWebuiHolder
from app.core.servers.vllm import VllmHolder
from app.core.servers.webui import WebUIHolder
from app.core.settings import ServerConfig, Settings

ADAPTERS: dict[str, tuple[type[ServerHolder], FindRunners]] = {
    "ollama": (OllamaHolder, ollama_runners),
    "llama_cpp": (LlamaCppHolder, llama_server_instances),
    "llama_swap": (LlamaSwapHolder, llama_swap_upstreams),
    "lm_studio": (LmStudioHolder, lm_studio_processes),
    "text_generation_webui": (TextGenerationWebuiHolder, text_generation_webui_processes),
    "vllm": (VllmHolder, vllm_processes),
    "sglang": (SglangHolder, sglang_processes),
    "comfyui": (ComfyUIHolder, comfyui_processes),
    "a1111": (WebUIHolder, webui_processes),
    "forge": (WebUIHolder, webui_processes),  # Forge keeps A1111's /sdapi/v1 API
    "invokeai": (InvokeAIHolder, invokeai_processes),
    "localai": (LocalAIHolder, localai_processes),
    "koboldcpp": (KoboldCppHolder, koboldcpp_processes),
}
# Kinds without an API, stopped and started (their processes follow from their own entry: no finder here).
STOP_START: dict[str, type[StopStartHolder]] = {"command": CommandHolder, "systemd": SystemdHolder}


def make_server_holder(
    config: ServerConfig,
    *,
    backend: GpuBackend,
    clock: Callable[[], float] = time.monotonic,
    default_gpu: int = 0,
) -> ServerHolder:
    """The adapter for one `[[servers]]` entry. Raises ValueError naming the kind or URL that is wrong."""
    if config.kind in STOP_START:
        return STOP_START[config.kind](config, backend=backend, clock=clock, default_gpu=default_gpu)
    if config.kind not in ADAPTERS:
        kinds = ", ".join([*ADAPTERS, *STOP_START])
        raise ValueError(f"[[servers]] kind = {config.kind!r}: expected one of {kinds}")
    cls, find_runners = ADAPTERS[config.kind]
    return cls(config, backend=backend, find_runners=find_runners, clock=clock, default_gpu=default_gpu)


def make_server_holders(
    settings: Settings, *, backend: GpuBackend, clock: Callable[[], float] = time.monotonic
) -> list[ServerHolder]:
    return [
        make_server_holder(s, backend=backend, clock=clock, default_gpu=settings.gpu_device)
        for s in settings.servers
    ]


__all__ = [
    "ADAPTERS",
    "ComfyUIHolder",
    "CommandHolder",
    "InvokeAIHolder",
    "KoboldCppHolder",
    "LlamaCppHolder",
    "LlamaSwapHolder",
    "LmStudioHolder",
    "LocalAIHolder",
    "OllamaHolder",
    "RunnerProcess",
    "ServedModel",
    "ServerHolder",
    "ServerStatus",
    "SglangHolder",
    "StopStartHolder",
    "SystemdHolder",
    "TextGenerationWebuiHolder",
    "VllmHolder",
    "WebUIHolder",
    "make_server_holder",
    "make_server_holders",
]
