"""What the adapters of servers whose processes stay when they free a model share (LM Studio,
text-generation-webui, vLLM's sleep mode, SGLang's memory saver).

Ollama's runners and llama.cpp's router instances exit when they unload a model, so eviction waits until
those processes hold nothing. These servers keep their process, and with it its CUDA context (about
0.5 GiB); vLLM and SGLang keep CUDA graphs and NCCL buffers too. So they set `runners_stay` and list each
model with the bytes it holds (`ServedModel.vram_bytes`): what their processes hold minus what they keep
with no model loaded. That "kept" figure is learned from NVML whenever the server says it holds no model
(or is asleep); until then a default per process stands in. A free then expects the model's bytes back,
and anything still held beyond that is reported as residue, as for every server.

Also shared:
- an HTTP 401 becomes a message that says to set `api_key` in the `[[servers]]` entry (or that the key set
  was refused); the key goes out as a bearer token (JsonHttpClient's `bearer`);
- a server that cannot free its model (started without the flag that allows it: vLLM's sleep mode, SGLang's
  memory saver) is not ours to free: its listing fails with a message naming the flag (one ServerDown, then
  the usual backoff), and its processes are not reported as `managed` until the flag is added.
"""

from __future__ import annotations

import logging
from typing import Any

from app.core.gpu.backend import GpuBackend
from app.core.servers.base import HttpAnswer, ServerBadAnswer
from app.core.servers.holder import ServerHolder, require
from app.core.servers.runners import FindRunners, RunnerProcess
from app.core.servers.verify_free import HeldMemory, measure
from app.core.settings import ServerConfig
from app.core.units import MiB

logger = logging.getLogger(__name__)

UNAUTHORIZED = 401


class ProcessStaysHolder(ServerHolder):
    """ServerHolder for a server whose processes outlive the model they free (see the module docstring).

    Subclasses call `held_by_runners()` in `_list_models` to size what they list and `learn_kept()` when the
    server holds no model; they raise through `unmanageable()` when a start flag is missing."""

    runners_stay = True  # a free expects the models' own bytes (ServedModel.vram_bytes) back
    kept_per_process_bytes = 512 * MiB  # a CUDA context, until NVML shows what this server really keeps

    def __init__(
        self, config: ServerConfig, *, backend: GpuBackend, find_runners: FindRunners, **options: Any
    ) -> None:
        self._unmanageable: str | None = None
        self._kept_bytes: int | None = None  # learned: what the processes hold with no model loaded
        self._find_all_runners = find_runners
        super().__init__(config, backend=backend, find_runners=self._managed_runners, **options)

    # --- for subclasses ---------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        timeout_s: float | None = None,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> HttpAnswer:
        """One request through the client; an HTTP 401 becomes the message that says which key to set."""
        try:
            return self.client.request(method, path, body, timeout_s=timeout_s, ok_statuses=ok_statuses)
        except ServerBadAnswer as exc:
            problem = self.unauthorized(exc.status)
            if problem is not None:
                raise problem from exc
            raise

    def openai_model_names(self, where: str) -> list[str]:
        """The model ids of an OpenAI-compatible `GET /v1/models` (vLLM, SGLang), at least one."""
        data = self.call_json("GET", "/v1/models")
        require(
            isinstance(data, dict) and isinstance(data.get("data"), list),
            f"{where} (GET /v1/models) answered JSON without a 'data' list: {str(data)[:80]!r}",
        )
        names = [e["id"] for e in data["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
        require(bool(names), f"{where} (GET /v1/models) lists no model with an 'id': {str(data)[:80]!r}")
        return names

    def call_json(self, method: str, path: str, body: object | None = None, **options: Any) -> Any:
        answer = self.call(method, path, body, **options)
        return answer.json(f"{self.display_name} at {self.config.url} ({method} {path})")

    def unauthorized(self, answer_status: int | None) -> ServerBadAnswer | None:
        """The error for an HTTP 401: which key to set, or that the one set was refused."""
        if answer_status != UNAUTHORIZED:
            return None
        if self.config.api_key:
            return ServerBadAnswer(
                f"{self.display_name} at {self.config.url} refused the api_key of its [[servers]] entry "
                "(HTTP 401): set the key the server expects",
                status=UNAUTHORIZED,
            )
        return ServerBadAnswer(
            f"{self.display_name} at {self.config.url} requires an API key (HTTP 401): add "
            f'api_key = "..." to its [[servers]] entry{self.where_keys_are()}',
            status=UNAUTHORIZED,
        )

    def where_keys_are(self) -> str:
        """Where the user finds the key, for the 401 message (subclasses)."""
        return ""

    def unmanageable(self, message: str) -> ServerBadAnswer:
        """The server runs without the flag that lets it free memory: say which, stop managing it."""
        if self._unmanageable != message:
            logger.warning("%s", message)
        self._unmanageable = message
        return ServerBadAnswer(message)

    def manageable(self) -> None:
        self._unmanageable = None

    def held_by_runners(self) -> HeldMemory | None:
        """What the server's processes hold now (a fresh NVML sample); None when NVML cannot tell."""
        runners = self._runners_now()
        if not runners:
            return None
        try:
            return measure(self._backend.sample(), {r.pid for r in runners})
        except Exception:  # telemetry trouble must not fail a listing
            logger.exception("%s: sampling the GPU failed", self.name)
            return None

    def learn_kept(self, held: HeldMemory | None) -> None:
        """The server holds no model now: what its processes hold is what they keep."""
        if held is not None and held.visible and held.total_bytes != self._kept_bytes:
            logger.debug("%s keeps %d bytes with no model loaded", self.name, held.total_bytes)
            self._kept_bytes = held.total_bytes

    def kept_bytes(self, held: HeldMemory | None) -> int:
        if self._kept_bytes is not None:
            return self._kept_bytes
        processes = len(held.by_process) if held is not None else 1
        return self.kept_per_process_bytes * max(processes, 1)

    def model_bytes(self, held: HeldMemory | None) -> int | None:
        """What a loaded model holds: its processes' VRAM beyond what they keep without it."""
        if held is None or not held.visible:
            return None
        return max(held.total_bytes - self.kept_bytes(held), 0)

    # --- ServerHolder -------------------------------------------------------------------------------

    def _managed_runners(self) -> list[RunnerProcess]:
        """Its processes, unless it cannot free them (then they are not ours to count as managed)."""
        if self._unmanageable is not None:
            return []
        return self._find_all_runners()
