"""The InvokeAI adapter (invoke-ai/InvokeAI invokeai/app/api/routers/model_manager.py, mounted under /api).

- What it holds: `GET /api/v2/models/stats` -> null (nothing loaded yet) or its model cache's statistics
  {"hits", "misses", "high_watermark", "in_cache", "cleared", "cache_size", "loaded_model_sizes": {key:
  bytes}}. The cache lives in RAM and moves models to VRAM as they are used, so the item ("InvokeAI
  (host:port)") holds the smaller of the cached models' sizes and what its processes hold in NVML.
- Free: `POST /api/v2/models/empty_model_cache` -> 200 null: drops every model not in use ("locked" models
  of a running invocation stay: reported as residue).
- Bring back: none; the next invocation loads what it needs ("comes back on next use").
- Processes: `invokeai-web` and its children; they stay after a free (CUDA context).
"""

from __future__ import annotations

from typing import Any

from app.core.holders import ModelState
from app.core.servers.apps import HOLDS_MODELS_MIN_BYTES, AppHolder
from app.core.servers.holder import UNLOAD_TIMEOUT_S, ComesBackOnNextUse, ServedModel, require
from app.core.servers.ollama import byte_count


class InvokeAIHolder(AppHolder):
    name = "invokeai"
    display_name = "InvokeAI"
    runners_stay = True

    def _list_models(self) -> list[ServedModel]:
        stats = self.client.get_json("/api/v2/models/stats")
        if stats is None:  # no model loaded since it started
            return []
        where = f"InvokeAI at {self.config.url} (GET /api/v2/models/stats)"
        require(
            isinstance(stats, dict) and isinstance(stats.get("loaded_model_sizes"), dict),
            f"{where} answered JSON without 'loaded_model_sizes': {str(stats)[:80]!r}",
        )
        sizes: dict[str, Any] = stats["loaded_model_sizes"]
        cached = sum(byte_count(v) or 0 for v in sizes.values())
        in_vram = self._held_by_processes()
        held = cached if in_vram is None else min(cached, in_vram)
        if held < HOLDS_MODELS_MIN_BYTES:
            return []
        return [ServedModel(name=self.item_name(), state=ModelState.RESIDENT, vram_bytes=held)]

    def _unload(self, model: str) -> None:
        self.client.request("POST", "/api/v2/models/empty_model_cache", timeout_s=UNLOAD_TIMEOUT_S)

    def _load(self, model: str) -> None:
        raise ComesBackOnNextUse("InvokeAI loads its models again at the next invocation")
