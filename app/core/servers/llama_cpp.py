"""The adapter for llama.cpp's server in router mode (ggml-org/llama.cpp, tools/server/README.md, "Using
multiple models": `llama-server` started without a model).

- What it holds: `GET /models` -> {"data": [{"id", "path", "status": {"value": "loaded" | "loading" |
  "unloaded" | "sleeping" | "downloading", "args": [...], "failed": true, "exit_code": 1}}]}. Only "loaded"
  holds VRAM for sure; "loading" counts as loading; "sleeping" instances have let go of their weights.
  The router does not say how much VRAM a model takes: NVML does, through the model's instance process.
- Unload: `POST /models/unload {"model": id}` -> {"success": true}. Load: `POST /models/load {"model": id}`
  -> {"success": true}; the instance then goes "loading" -> "loaded" (or back to "unloaded" with "failed").
- Runners: the router starts one `llama-server` child per model; a child is matched to its model by the
  model's `path` (or id) among its arguments.
- keep_alive does not apply (the router unloads by LRU when --models-max is reached).
"""

from __future__ import annotations

import logging
from typing import Any

from app.core.holders import ModelState
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, ServerHolder, require

logger = logging.getLogger(__name__)

_STATES = {"loaded": ModelState.RESIDENT, "loading": ModelState.LOADING}


class LlamaCppHolder(ServerHolder):
    name = "llama_cpp"
    display_name = "llama-server"

    def _list_models(self) -> list[ServedModel]:
        data = self.client.get_json("/models")
        where = f"llama-server at {self.config.url} (GET /models)"
        require(
            isinstance(data, dict) and isinstance(data.get("data"), list),
            f"{where} has no 'data' list (is it in router mode?): {str(data)[:80]!r}",
        )
        entries: list[Any] = data["data"]
        out: list[ServedModel] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                logger.debug("%s: skipped an entry without an id: %r", where, entry)
                continue
            status = entry.get("status")
            value = status.get("value") if isinstance(status, dict) else None
            state = _STATES.get(value) if isinstance(value, str) else None
            if state is None:
                continue
            model_id: str = entry["id"]
            path = entry.get("path")
            keys = tuple(k for k in (path, model_id) if isinstance(k, str) and k)
            out.append(ServedModel(name=model_id, state=state, runner_args=keys))
        return out

    def _unload(self, model: str) -> None:
        answer = self.client.request(
            "POST",
            "/models/unload",
            {"model": model},
            timeout_s=UNLOAD_TIMEOUT_S,
            ok_statuses=(200, 400, 404),
        )
        if answer.status != 200:  # not loaded, or not known: nothing to unload
            logger.info("llama-server: %s was not loaded (HTTP %d)", model, answer.status)
            return
        data = answer.json(f"llama-server at {self.config.url} (POST /models/unload)")
        require(
            isinstance(data, dict) and data.get("success") is True,
            f"llama-server at {self.config.url} did not confirm unloading {model}: {str(data)[:80]!r}",
        )

    def _load(self, model: str) -> None:
        data = self.client.post_json("/models/load", {"model": model}, timeout_s=LOAD_TIMEOUT_S)
        require(
            isinstance(data, dict) and data.get("success") is True,
            f"llama-server at {self.config.url} did not accept loading {model}: {str(data)[:80]!r}",
        )
