"""The llama-swap adapter (mostlygeek/llama-swap: README "custom API endpoints", proxy/proxymanager.go and
proxy/proxymanager_api.go).

- What it holds: `GET /running` -> {"running": [{"model", "state", "cmd", "proxy", "ttl", "name",
  "description"}]}. States: "ready" holds the model; "starting" is loading; "stopping", "shutdown" and
  "stopped" are on their way out. (With process groups, llama-swap lists only "ready" ones; with its matrix
  mode every running one.)
- Unload: `POST /api/models/unload/{model}` -> 200 "OK" (text), 404 for a model it does not know;
  `POST /api/models/unload` -> {"msg": "ok"} unloads everything.
- Restore: `GET /upstream/{model}/`: llama-swap starts the model's upstream and proxies the request to it
  once it is ready, the same path its own `hooks.on_startup.preload` takes (a GET of "/" on the model).
  Any answer of the upstream counts: the request only has to make llama-swap start it.
- Runners: the descendants of `llama-swap` (the upstream servers); one is matched to its model by the port
  of the model's `proxy` URL among its arguments.
- keep_alive does not apply (llama-swap's own `ttl` decides).
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from app.core.holders import ModelState
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, ServerHolder, require

logger = logging.getLogger(__name__)

_STATES = {"ready": ModelState.RESIDENT, "starting": ModelState.LOADING}


def model_path(model: str) -> str:
    """A model id in a URL path: its slashes kept (llama-swap matches ids like "author/model")."""
    return urllib.parse.quote(model, safe="/:@")


class LlamaSwapHolder(ServerHolder):
    name = "llama_swap"
    display_name = "llama-swap"

    def _list_models(self) -> list[ServedModel]:
        data = self.client.get_json("/running")
        where = f"llama-swap at {self.config.url} (GET /running)"
        require(
            isinstance(data, dict) and isinstance(data.get("running"), list),
            f"{where} answered JSON without a 'running' list: {str(data)[:80]!r}",
        )
        entries: list[Any] = data["running"]
        out: list[ServedModel] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
                logger.debug("%s: skipped an entry without a model: %r", where, entry)
                continue
            state_text = entry.get("state")
            state = _STATES.get(state_text) if isinstance(state_text, str) else None
            if state is None:
                continue
            out.append(ServedModel(name=entry["model"], state=state, runner_args=_port_argument(entry)))
        return out

    def _unload(self, model: str) -> None:
        answer = self.client.request(
            "POST",
            f"/api/models/unload/{model_path(model)}",
            timeout_s=UNLOAD_TIMEOUT_S,
            ok_statuses=(200, 404),
        )
        if answer.status == 404:
            logger.info("llama-swap: it does not know %s (404)", model)

    def _load(self, model: str) -> None:
        self.client.request(
            "GET",
            f"/upstream/{model_path(model)}/",
            timeout_s=LOAD_TIMEOUT_S,
            ok_statuses=tuple(range(200, 500)),
        )


def _port_argument(entry: dict[str, Any]) -> tuple[str, ...]:
    """What identifies the upstream of one /running entry: the port of its proxy URL among its arguments."""
    proxy = entry.get("proxy")
    if not isinstance(proxy, str):
        return ()
    try:
        port = urllib.parse.urlsplit(proxy).port
    except ValueError:
        return ()
    return () if port is None else (str(port),)
