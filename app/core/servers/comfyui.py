"""The ComfyUI adapter (comfyanonymous/ComfyUI server.py and main.py, see tests/fixtures/servers/canned.py).

- What it holds: `GET /system_stats` -> {"system": {...}, "devices": [{"name", "type", "index", "vram_total",
  "vram_free", "torch_vram_total", "torch_vram_free"}]}. `torch_vram_total` is what PyTorch's allocator
  holds on that device (its models and caches): that is what a free gives back. ComfyUI has no list of
  loaded models, so it is one item, "ComfyUI (host:port)", held while PyTorch holds memory.
- Free: `POST /free {"unload_models": true, "free_memory": true}` -> HTTP 200, empty body. It only sets
  flags: ComfyUI's prompt worker unloads afterwards, so the free is verified through NVML. Its process stays
  (CUDA context and all): only the models' bytes come back.
- Bring back: none. The next prompt loads what it needs: the item is shown as "comes back on next use".
- Processes: `main.py` of a ComfyUI folder, `comfy launch`, or the desktop app, with their children.
"""

from __future__ import annotations

from typing import Any

from app.core.holders import ModelState
from app.core.servers.apps import HOLDS_MODELS_MIN_BYTES, AppHolder
from app.core.servers.holder import UNLOAD_TIMEOUT_S, ComesBackOnNextUse, ServedModel, require
from app.core.servers.ollama import byte_count

FREE_REQUEST = {"unload_models": True, "free_memory": True}


class ComfyUIHolder(AppHolder):
    name = "comfyui"
    display_name = "ComfyUI"
    runners_stay = True

    def _list_models(self) -> list[ServedModel]:
        data = self.client.get_json("/system_stats")
        where = f"ComfyUI at {self.config.url} (GET /system_stats)"
        require(
            isinstance(data, dict) and isinstance(data.get("devices"), list),
            f"{where} answered JSON without a 'devices' list: {str(data)[:80]!r}",
        )
        devices: list[Any] = data["devices"]
        held = 0
        for device in devices:
            if isinstance(device, dict) and device.get("type") == "cuda":
                held += byte_count(device.get("torch_vram_total")) or 0
        if held < HOLDS_MODELS_MIN_BYTES:
            return []
        return [ServedModel(name=self.item_name(), state=ModelState.RESIDENT, vram_bytes=held)]

    def _unload(self, model: str) -> None:
        self.client.request("POST", "/free", FREE_REQUEST, timeout_s=UNLOAD_TIMEOUT_S)

    def _load(self, model: str) -> None:
        raise ComesBackOnNextUse("ComfyUI loads its models again at the next prompt")
