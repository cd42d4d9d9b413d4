"""The LM Studio adapter: its native REST API v1 (LM Studio 0.4.0 and newer; lmstudio-ai/docs
1_developer/2_rest/list.md, load.md, unload.md and 1_developer/0_core/authentication.mdx @ c6854fba).

- What it holds: `GET /api/v1/models` -> {"models": [{"type", "key", "size_bytes", "loaded_instances":
  [{"id", "config": {"context_length", ...}}], ...}]}. Every loaded instance is one model here, named by its
  instance id (the model's key for the first instance, "key:2" for a second one); its size is the model's
  `size_bytes` (LM Studio does not say how much of it is on the GPU).
- Free: `POST /api/v1/models/unload {"instance_id"}` -> {"instance_id"}.
- Bring back: `POST /api/v1/models/load {"model": key, "context_length", ...}` with the instance's own load
  config as the listing showed it -> {"type", "instance_id", "load_time_seconds", "status": "loaded"}; it
  answers once loaded.
- Authentication (Developer > Server Settings > "Require Authentication"): every request needs
  `Authorization: Bearer <token>`; the `api_key` of the `[[servers]]` entry is sent as that token, and an
  HTTP 401 says to set it.
- The engine runs in a `node` helper process of LM Studio that stays after an unload (with its CUDA
  context): a free expects the model's bytes back, not the process. With JIT loading on (the default), a
  client that names an unloaded model loads it: during a game, it is freed again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.core.holders import ModelState
from app.core.servers.base import ServerBadAnswer
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, require
from app.core.servers.ollama import byte_count
from app.core.servers.process_stays import ProcessStaysHolder

logger = logging.getLogger(__name__)

# The load settings of an instance that a load request accepts (load.md); others are not sent back.
_LOAD_CONFIG_KEYS = (
    "context_length",
    "eval_batch_size",
    "flash_attention",
    "num_experts",
    "offload_kv_cache_to_gpu",
)


class LmStudioHolder(ProcessStaysHolder):
    name = "lm_studio"
    display_name = "LM Studio"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._instances: dict[str, tuple[str, dict[str, Any]]] = {}  # instance id -> (model key, load config)

    def where_keys_are(self) -> str:
        return " (LM Studio: Developer > Server Settings > Manage Tokens)"

    def _list_models(self) -> list[ServedModel]:
        where = f"LM Studio at {self.config.url} (GET /api/v1/models)"
        data = self.call_json("GET", "/api/v1/models")
        require(
            isinstance(data, dict) and isinstance(data.get("models"), list),
            f"{where} answered JSON without a 'models' list (LM Studio 0.4 or newer?): {str(data)[:80]!r}",
        )
        out: list[ServedModel] = []
        for entry in data["models"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                logger.debug("%s: skipped an entry without a key: %r", where, entry)
                continue
            instances = entry.get("loaded_instances")
            if not isinstance(instances, list):
                continue
            size = byte_count(entry.get("size_bytes"))
            for instance in instances:
                if not isinstance(instance, dict) or not isinstance(instance.get("id"), str):
                    continue
                config = instance.get("config")
                load_config = (
                    {k: config[k] for k in _LOAD_CONFIG_KEYS if k in config}
                    if isinstance(config, dict)
                    else {}
                )
                with self._lock:
                    self._instances[instance["id"]] = (entry["key"], load_config)
                out.append(ServedModel(name=instance["id"], state=ModelState.RESIDENT, vram_bytes=size))
        if not out:
            self.learn_kept(self.held_by_runners())
        return out

    def _unload(self, model: str) -> None:
        answer = self.call(
            "POST",
            "/api/v1/models/unload",
            {"instance_id": model},
            timeout_s=UNLOAD_TIMEOUT_S,
            ok_statuses=(200, 400, 404),
        )
        if answer.status != 200:  # not loaded (any more): nothing to unload
            logger.info("lm_studio: %s was not loaded (HTTP %d)", model, answer.status)
            return
        data = answer.json(f"LM Studio at {self.config.url} (POST /api/v1/models/unload)")
        require(
            isinstance(data, dict) and data.get("instance_id") == model,
            f"LM Studio at {self.config.url} did not confirm unloading {model}: {str(data)[:80]!r}",
        )

    def _load(self, model: str) -> None:
        with self._lock:
            key, load_config = self._instances.get(model, (model, {}))
        data = self.call_json(
            "POST", "/api/v1/models/load", {"model": key, **load_config}, timeout_s=LOAD_TIMEOUT_S
        )
        require(
            isinstance(data, dict) and data.get("status") == "loaded",
            f"LM Studio at {self.config.url} did not confirm loading {key}: {str(data)[:80]!r}",
        )
        if data.get("instance_id") != model:
            raise ServerBadAnswer(
                f"LM Studio at {self.config.url} loaded {key} as {data.get('instance_id')!r}, not as {model}"
            )
