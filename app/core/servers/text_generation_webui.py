"""The text-generation-webui adapter: its internal API (oobabooga/text-generation-webui v4.7.3,
modules/api/script.py, modules/api/models.py and modules/models.py @ 1dcde41d).

- What it holds: `GET /v1/internal/model/info` -> {"model_name", "lora_names", "loader"}; `model_name` is
  the string "None" when no model is loaded. One model at a time.
- Free: `POST /v1/internal/model/unload` -> "OK". Bring back: `POST /v1/internal/model/load {"model_name"}`
  -> "OK" once loaded (it unloads whatever else is loaded first).
- Requirements: the API listens only when the web UI was started with `--api` (port 5000): a server that
  does not answer is told to start it so. With `--api-key` or `--admin-key`, requests need
  `Authorization: Bearer <key>` (load and unload need the admin key, which defaults to the API key): the
  `api_key` of the `[[servers]]` entry is sent, and an HTTP 401 says to set it.
- Quirk: with `--idle-timeout`, the web UI unloads an idle model but keeps its name, so model/info still
  names it; an unload then does nothing and the name stays. So after our unload, a listing that still names
  the same model counts as unloaded, unless NVML shows its processes holding it again (the next generation
  request reloads an idle-unloaded model).
- Its processes: the web UI's Python process (with a CUDA context once a Transformers or ExLlama model was
  loaded; it stays) and, with the llama.cpp loader, a `llama-server` child that exits on unload. A free
  expects back the model's bytes: what they hold beyond what they keep with no model.
"""

from __future__ import annotations

import logging
from typing import Any

from app.core.holders import ModelState
from app.core.servers.base import ServerUnreachable
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, require
from app.core.servers.process_stays import ProcessStaysHolder
from app.core.units import MiB

logger = logging.getLogger(__name__)

NO_MODEL = "None"  # shared.model_name when nothing is loaded
_RELOADED_ABOVE_BYTES = 256 * MiB  # beyond what it keeps: an idle-unloaded model came back


class TextGenerationWebuiHolder(ProcessStaysHolder):
    name = "text_generation_webui"
    display_name = "text-generation-webui"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unloaded_name: str | None = None  # what we unloaded (the idle-timeout quirk keeps the name)

    def where_keys_are(self) -> str:
        return " (its --admin-key, or --api-key when no admin key is set)"

    def _list_models(self) -> list[ServedModel]:
        where = f"text-generation-webui at {self.config.url}"
        try:
            data = self.call_json("GET", "/v1/internal/model/info")
        except ServerUnreachable as exc:
            raise ServerUnreachable(
                f"{exc.message} (is text-generation-webui running with --api? Its API listens only then)"
            ) from exc
        require(
            isinstance(data, dict) and isinstance(data.get("model_name"), str),
            f"{where} (GET /v1/internal/model/info) answered without a 'model_name': {str(data)[:80]!r}",
        )
        name: str = data["model_name"]
        held = self.held_by_runners()
        if name in (NO_MODEL, ""):
            self._unloaded_name = None
            self.learn_kept(held)
            return []
        model_bytes = self.model_bytes(held)
        if name == self._unloaded_name:
            if model_bytes is None or model_bytes < _RELOADED_ABOVE_BYTES:
                return []  # still named after our unload: idle-unloaded, nothing in VRAM
            logger.info("text_generation_webui: %s was loaded again (its processes hold it)", name)
            self._unloaded_name = None
        return [ServedModel(name=name, state=ModelState.RESIDENT, vram_bytes=model_bytes)]

    def _unload(self, model: str) -> None:
        self.call("POST", "/v1/internal/model/unload", timeout_s=UNLOAD_TIMEOUT_S)
        self._unloaded_name = model

    def _load(self, model: str) -> None:
        data = self.call_json(
            "POST", "/v1/internal/model/load", {"model_name": model}, timeout_s=LOAD_TIMEOUT_S
        )
        require(
            data == "OK",
            f"text-generation-webui at {self.config.url} did not confirm loading {model}: {str(data)[:80]!r}",
        )
        self._unloaded_name = None
