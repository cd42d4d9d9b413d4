"""The Ollama adapter (https://github.com/ollama/ollama, docs/api.md).

- What is resident: `GET /api/ps` -> {"models": [{"name", "model", "size", "size_vram", "expires_at",
  "digest", "details"}]}. `size` is the whole model in memory, `size_vram` the part on the GPU: size_vram <
  size means part of it runs on the CPU (ModelPartlyOnCpu). A model being unloaded is still listed for a
  moment with `expires_at` in the past (`ollama ps` shows "Stopping..."): that one no longer counts.
- Unload: `POST /api/generate {"model": M, "keep_alive": 0}` -> {"model": M, "done": true,
  "done_reason": "unload"}. Ollama answers BEFORE the runner has freed the memory: eviction waits for NVML.
- Restore: `POST /api/generate {"model": M, "keep_alive": K}` with no prompt preloads the model; it answers
  when the model is loaded. /api/ps does not say what keep_alive a model had, so K is the server's
  configured `keep_alive` ("5m", "1h", "-1" for ever; a bare number is sent as a number of seconds, as
  Ollama reads "-1" only as a number).
- Runners: `ollama runner ...` processes (children of `ollama serve`), one per loaded model. Ollama does not
  say which runner holds which model, so eviction watches all of them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from app.core.holders import ModelState
from app.core.servers.base import ServerBadAnswer
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, ServerHolder, require

logger = logging.getLogger(__name__)

_FRACTION = re.compile(r"(\.\d{6})\d+")  # Go writes nanoseconds; Python parses microseconds
_UNKNOWN_BEFORE_YEAR = 1971  # Go's zero time (0001-01-01) and the like: "no expiry known", not "expired"


def keep_alive_value(text: str) -> str | int:
    """What to send as keep_alive: a bare integer ("-1", "300") as a number of seconds, else the duration
    text ("5m", "1h30m") as Ollama parses it."""
    stripped = text.strip()
    return int(stripped) if re.fullmatch(r"-?\d+", stripped) else stripped


def parse_expires_at(value: object) -> float | None:
    """Unix time of an RFC 3339 `expires_at`, None when absent, unparsable or Go's zero time."""
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    if parsed.year < _UNKNOWN_BEFORE_YEAR:
        return None
    return parsed.timestamp()


def byte_count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        return None
    return int(value)


class OllamaHolder(ServerHolder):
    name = "ollama"
    display_name = "Ollama"

    def _list_models(self) -> list[ServedModel]:
        data = self.client.get_json("/api/ps")
        where = f"Ollama at {self.config.url} (GET /api/ps)"
        require(
            isinstance(data, dict) and isinstance(data.get("models"), list),
            f"{where} answered JSON without a 'models' list: {str(data)[:80]!r}",
        )
        entries: list[Any] = data["models"]
        now = self._wall_clock()
        out: list[ServedModel] = []
        bad = 0
        for entry in entries:
            name = (entry.get("name") or entry.get("model")) if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                bad += 1
                continue
            expires = parse_expires_at(entry.get("expires_at"))
            if expires is not None and expires < now:
                logger.debug("ollama: %s is being unloaded (expires_at in the past)", name)
                continue
            digest = entry.get("digest")
            out.append(
                ServedModel(
                    name=name,
                    state=ModelState.RESIDENT,
                    vram_bytes=byte_count(entry.get("size_vram")),
                    total_bytes=byte_count(entry.get("size")),
                    digest=digest if isinstance(digest, str) else None,
                )
            )
        if bad:
            if bad == len(entries):
                raise ServerBadAnswer(f"{where}: none of the {bad} entries under 'models' has a name")
            logger.warning("%s: skipped %d entries without a name", where, bad)
        return out

    def _unload(self, model: str) -> None:
        answer = self.client.request(
            "POST",
            "/api/generate",
            {"model": model, "keep_alive": 0},
            timeout_s=UNLOAD_TIMEOUT_S,
            ok_statuses=(200, 404),
        )
        if answer.status == 404:  # "model 'x' not found": nothing to unload
            logger.info("ollama: %s was not loaded (404)", model)
            return
        data = answer.json(f"Ollama at {self.config.url} (POST /api/generate)")
        require(
            isinstance(data, dict) and data.get("done") is True,
            f"Ollama at {self.config.url} did not confirm unloading {model}: {str(data)[:80]!r}",
        )

    def _load(self, model: str) -> None:
        body = {"model": model, "keep_alive": keep_alive_value(self.config.keep_alive)}
        data = self.client.post_json("/api/generate", body, timeout_s=LOAD_TIMEOUT_S)
        require(
            isinstance(data, dict) and data.get("done") is True,
            f"Ollama at {self.config.url} did not confirm loading {model}: {str(data)[:80]!r}",
        )
