"""The LocalAI adapter (mudler/LocalAI core/http/routes/localai.go, core/http/endpoints/localai/
{system,backend_monitor,backend_load}.go and docs/content/operations/backend-monitor.md).

- What it holds: `GET /system` -> {"backends": [...], "loaded_models": [{"id", "backend"}]}.
  (`GET /backend/monitor?model=M` reports a backend's RAM, not its VRAM: NVML does that.)
- Free: `POST /backend/shutdown {"model": M}` -> {"message": "model stopped"}; HTTP 404 when M is not
  loaded (not an error). Its backend process exits: verified through NVML.
- Bring back: `POST /backend/load {"model": M}` -> {"loaded": [...], "message": "model loaded"}, answered
  once loaded. A LocalAI without that route (HTTP 404) loads the model at its next request: "comes back on
  next use".
- These routes are admin-only: with API keys set (LOCALAI_API_KEY) they answer 401 without one; the
  adapter sends `api_key` as a bearer token and says so when it is missing or wrong.
- Processes: the backends (one gRPC process per model, `--addr 127.0.0.1:<port>`) are children of
  `local-ai`; they do not name their model, so freeing one model of several watches them all, and a
  model's VRAM is known (NVML, over its processes) only while it is the only one loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from app.core.holders import ModelState
from app.core.servers.apps import AppHolder
from app.core.servers.base import HttpAnswer, ServerBadAnswer
from app.core.servers.holder import (
    LOAD_TIMEOUT_S,
    UNLOAD_TIMEOUT_S,
    ComesBackOnNextUse,
    ServedModel,
    require,
)

logger = logging.getLogger(__name__)

_REFUSED = (401, 403)


class LocalAIHolder(AppHolder):
    name = "localai"
    display_name = "LocalAI"

    def _checked(self, answer: HttpAnswer, what: str) -> HttpAnswer:
        if answer.status in _REFUSED:
            key = "a wrong api_key" if self.config.api_key else "no api_key"
            raise ServerBadAnswer(
                f"LocalAI at {self.config.url} refused {what} (HTTP {answer.status}, {key}): set api_key "
                "in its [[servers]] entry to one of its API keys (LOCALAI_API_KEY)",
                status=answer.status,
            )
        return answer

    def _list_models(self) -> list[ServedModel]:
        answer = self._checked(
            self.client.request("GET", "/system", ok_statuses=(200, *_REFUSED)), "GET /system"
        )
        data = answer.json(f"LocalAI at {self.config.url} (GET /system)")
        require(
            isinstance(data, dict)
            and "loaded_models" in data
            and isinstance(data["loaded_models"], list | None),
            f"LocalAI at {self.config.url} (GET /system) answered JSON without 'loaded_models': "
            f"{str(data)[:80]!r}",
        )
        entries: list[Any] = data.get("loaded_models") or []  # Go writes an empty list as null
        names = [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]]
        # its backends do not name their model: with one model loaded, all they hold is that model's
        size = self._held_by_processes() if len(names) == 1 else None
        return [ServedModel(name=n, state=ModelState.RESIDENT, vram_bytes=size) for n in names]

    def _unload(self, model: str) -> None:
        answer = self.client.request(
            "POST",
            "/backend/shutdown",
            {"model": model},
            timeout_s=UNLOAD_TIMEOUT_S,
            ok_statuses=(200, 404, *_REFUSED),
        )
        if self._checked(answer, f"to stop {model}").status == 404:
            logger.info("localai: %s was not loaded (404)", model)

    def _load(self, model: str) -> None:
        answer = self.client.request(
            "POST",
            "/backend/load",
            {"model": model},
            timeout_s=LOAD_TIMEOUT_S,
            ok_statuses=(200, 404, *_REFUSED),
        )
        if self._checked(answer, f"to load {model}").status == 404:
            raise ComesBackOnNextUse("this LocalAI has no /backend/load: the model loads at its next request")
