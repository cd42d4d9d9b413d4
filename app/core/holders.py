"""The ModelHolder protocol: what the engine needs from anything that holds models in VRAM (the built-in
residency manager, and later the adapters for Ollama, llama.cpp's server and llama-swap)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.core.events import Event


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"  # configured, never loaded (or unloaded by the user)
    LOADING = "loading"
    RESIDENT = "resident"
    EVICTED = "evicted"  # freed by VRAM Steward; will be restored when the GPU is free
    FAILED = "failed"  # the last load failed; see last_error


@dataclass(frozen=True)
class ModelStatus:
    name: str
    gpu: int
    size_bytes: int | None
    state: ModelState
    holder: str  # "builtin" | "ollama" | ...
    digest: str | None = None
    priority: int = 0
    last_used_at: float | None = None
    load_seconds: float | None = None
    load_bytes_per_s: float | None = None
    progress_done_bytes: int | None = None  # while LOADING
    progress_total_bytes: int | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "gpu": self.gpu,
            "size_bytes": self.size_bytes,
            "state": str(self.state),
            "digest": self.digest,
            "holder": self.holder,
            "priority": self.priority,
            "load_seconds": self.load_seconds,
            "load_bytes_per_s": self.load_bytes_per_s,
            "progress_done_bytes": self.progress_done_bytes,
            "progress_total_bytes": self.progress_total_bytes,
            "last_error": self.last_error,
        }


class ModelHolder(Protocol):
    """Anything that holds models in VRAM on our behalf. Calls are made from the engine's worker thread only.

    `start_load` returns at once; progress and completion arrive through `poll()`. `evict` is synchronous
    and fast: it frees the VRAM (cancelling loads in flight) before it returns.
    """

    name: str

    def models(self) -> Sequence[ModelStatus]: ...

    def pids(self) -> set[int]:
        """PIDs of processes that hold VRAM for this holder (role `self` or `managed`)."""
        ...

    def start_load(self, model: str) -> None: ...

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]: ...

    def unload(self, model: str) -> Sequence[Event]:
        """The user's unload: like evict, but the model is not restored on resume."""
        ...

    def poll(self) -> Sequence[Event]:
        """Progress, completed loads, a host that died. Never blocks."""
        ...

    def close(self) -> None:
        """Free everything and stop (ordered shutdown)."""
        ...
