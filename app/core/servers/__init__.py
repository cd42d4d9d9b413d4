"""Adapters for the model servers people already run (Ollama, llama.cpp's server in router mode,
llama-swap), behind the same ModelHolder protocol as the built-in residency. See docs/servers.md."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.gpu.backend import GpuBackend
from app.core.servers.holder import ServedModel, ServerHolder, ServerStatus
from app.core.servers.llama_cpp import LlamaCppHolder
from app.core.servers.llama_swap import LlamaSwapHolder
from app.core.servers.ollama import OllamaHolder
from app.core.servers.runners import (
    FindRunners,
    RunnerProcess,
    llama_server_instances,
    llama_swap_upstreams,
    ollama_runners,
)
from app.core.settings import ServerConfig, Settings

ADAPTERS: dict[str, tuple[type[ServerHolder], FindRunners]] = {
    "ollama": (OllamaHolder, ollama_runners),
    "llama_cpp": (LlamaCppHolder, llama_server_instances),
    "llama_swap": (LlamaSwapHolder, llama_swap_upstreams),
}


def make_server_holder(
    config: ServerConfig,
    *,
    backend: GpuBackend,
    clock: Callable[[], float] = time.monotonic,
    default_gpu: int = 0,
) -> ServerHolder:
    """The adapter for one `[[servers]]` entry. Raises ValueError naming the kind or URL that is wrong."""
    if config.kind not in ADAPTERS:
        raise ValueError(f"[[servers]] kind = {config.kind!r}: expected one of {', '.join(ADAPTERS)}")
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
    "LlamaCppHolder",
    "LlamaSwapHolder",
    "OllamaHolder",
    "RunnerProcess",
    "ServedModel",
    "ServerHolder",
    "ServerStatus",
    "make_server_holder",
    "make_server_holders",
]
