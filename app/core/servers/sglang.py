"""The SGLang adapter: the memory saver (sgl-project/sglang python/sglang/srt/entrypoints/http_server.py
@ 0025436e: release_memory_occupation, resume_memory_occupation, get_server_info, /v1/models).

- What it holds: `GET /v1/models` -> {"object": "list", "data": [{"id": served_model_name, "root", ...}]}
  (one model per server). SGLang does not say whether its memory is released, so the adapter remembers
  what it released, and NVML says whether someone resumed it meanwhile (its processes hold the model's
  bytes again).
- Free: `POST /release_memory_occupation {}` (all tags: weights, KV cache, CUDA graphs) -> HTTP 200 with
  `null`; an error is HTTP 400 {"error": {"message"}}. Bring back: `POST /resume_memory_occupation {}`.
- Requirement: the server must run with `--enable-memory-saver`, else a release frees nothing (and still
  answers 200). `GET /get_server_info` has the server's arguments, `enable_memory_saver` among them: false
  makes the listing fail with a message naming the flag, and SGLang is not managed.
- With `--api-key`, requests carry the `api_key` of the `[[servers]]` entry as a bearer token.
- The scheduler process stays while released: a free expects back the model's bytes, not the process.
"""

from __future__ import annotations

import logging
from typing import Any

from app.core.holders import ModelState
from app.core.servers.base import ServerBadAnswer
from app.core.servers.holder import LOAD_TIMEOUT_S, ServedModel, require
from app.core.servers.process_stays import ProcessStaysHolder
from app.core.units import GiB

logger = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 120.0  # SGLang answers once the memory is released


class SglangHolder(ProcessStaysHolder):
    name = "sglang"
    display_name = "SGLang"
    kept_per_process_bytes = 1 * GiB  # CUDA context and NCCL buffers stay while released

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saver_checked = False
        self._released = False  # we released its memory and have not resumed it
        self._model_bytes: int | None = None  # what the model held when last seen awake

    def _list_models(self) -> list[ServedModel]:
        try:
            return self._list()
        except ServerBadAnswer:
            raise
        except Exception:
            self._saver_checked = False  # a restarted server may have other flags
            raise

    def _list(self) -> list[ServedModel]:
        where = f"SGLang at {self.config.url}"
        names = self.openai_model_names(where)
        if not self._saver_checked:
            info = self.call_json("GET", "/get_server_info")
            require(isinstance(info, dict), f"{where} (GET /get_server_info) is not an object")
            if info.get("enable_memory_saver") is not True:
                raise self.unmanageable(
                    f"{where} runs without --enable-memory-saver: it cannot release its GPU memory; "
                    "restart it with --enable-memory-saver"
                )
            self._saver_checked = True
        self.manageable()
        held = self.held_by_runners()
        bytes_now = self.model_bytes(held)
        if self._released:
            resumed = (
                bytes_now is not None and self._model_bytes is not None and bytes_now > self._model_bytes // 2
            )
            if not resumed:
                self.learn_kept(held)
                return []
            logger.info("sglang: %s holds its memory again (someone resumed it)", names[0])
            self._released = False
        if bytes_now is not None:
            self._model_bytes = bytes_now
        return [ServedModel(name=names[0], state=ModelState.RESIDENT, vram_bytes=bytes_now)]

    def _unload(self, model: str) -> None:
        self.call("POST", "/release_memory_occupation", {}, timeout_s=RELEASE_TIMEOUT_S)
        self._released = True

    def _load(self, model: str) -> None:
        self.call("POST", "/resume_memory_occupation", {}, timeout_s=LOAD_TIMEOUT_S)
        self._released = False
