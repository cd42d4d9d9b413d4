"""The adapter for the Stable Diffusion web UI: AUTOMATIC1111 and Forge (AUTOMATIC1111/stable-diffusion-webui
modules/api/api.py; Forge keeps the same /sdapi/v1 routes). Its API exists only when started with `--api`.

- What it holds: `GET /sdapi/v1/memory` -> {"ram": {...}, "cuda": {"system": {"free", "used", "total"},
  "active", "allocated", "reserved": {"current", "peak"}, "inactive", "events"}} ("cuda": {"error": ...}
  without CUDA). `cuda.reserved.current` is what PyTorch holds: the checkpoint and its caches. The item is
  the checkpoint, named by `GET /sdapi/v1/options` -> {"sd_model_checkpoint": "<title>", ...}.
- Free: `POST /sdapi/v1/unload-checkpoint` -> {}. Bring back: `POST /sdapi/v1/reload-checkpoint` -> {}
  (answers once the weights are back on the GPU). A generation during a game loads the checkpoint again.
- Without `--api` every /sdapi route answers HTTP 404 {"detail": "Not Found"}: the adapter says to add it.
- Processes: `launch.py` / `webui.py` of stable-diffusion-webui(-forge) and their children. They stay after
  a free (CUDA context): only the checkpoint's bytes come back.
"""

from __future__ import annotations

from typing import Any

from app.core.holders import ModelState
from app.core.servers.apps import HOLDS_MODELS_MIN_BYTES, AppHolder
from app.core.servers.base import ServerBadAnswer
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, require
from app.core.servers.ollama import byte_count


def api_flag_message(url: str) -> str:
    return (
        f"the web UI at {url} has no API (HTTP 404 on /sdapi/v1): start it with --api "
        '(add it to COMMANDLINE_ARGS in webui-user.sh or webui-user.bat: COMMANDLINE_ARGS="--api")'
    )


class WebUIHolder(AppHolder):
    name = "a1111"
    display_name = "Stable Diffusion web UI"
    runners_stay = True

    def _get(self, path: str) -> Any:
        answer = self.client.request("GET", path, ok_statuses=(200, 404))
        if answer.status == 404:
            raise ServerBadAnswer(api_flag_message(self.config.url), status=404)
        return answer.json(f"GET {self.client.url(path)}")

    def _post(self, path: str, timeout_s: float) -> None:
        answer = self.client.request("POST", path, {}, timeout_s=timeout_s, ok_statuses=(200, 404))
        if answer.status == 404:
            raise ServerBadAnswer(api_flag_message(self.config.url), status=404)

    def _list_models(self) -> list[ServedModel]:
        memory = self._get("/sdapi/v1/memory")
        where = f"the web UI at {self.config.url} (GET /sdapi/v1/memory)"
        require(
            isinstance(memory, dict) and isinstance(memory.get("cuda"), dict),
            f"{where} answered JSON without a 'cuda' object: {str(memory)[:80]!r}",
        )
        cuda: dict[str, Any] = memory["cuda"]
        if "error" in cuda:  # no CUDA device (CPU, another vendor): nothing on an NVIDIA GPU
            return []
        reserved = cuda.get("reserved")
        held = byte_count(reserved.get("current")) if isinstance(reserved, dict) else None
        require(held is not None, f"{where} has no cuda.reserved.current: {str(cuda)[:80]!r}")
        if held is None or held < HOLDS_MODELS_MIN_BYTES:
            return []
        options = self._get("/sdapi/v1/options")
        checkpoint = options.get("sd_model_checkpoint") if isinstance(options, dict) else None
        name = checkpoint if isinstance(checkpoint, str) and checkpoint else self.item_name()
        return [ServedModel(name=name, state=ModelState.RESIDENT, vram_bytes=held)]

    def _unload(self, model: str) -> None:
        self._post("/sdapi/v1/unload-checkpoint", UNLOAD_TIMEOUT_S)

    def _load(self, model: str) -> None:
        self._post("/sdapi/v1/reload-checkpoint", LOAD_TIMEOUT_S)
