"""The vLLM adapter: sleep mode (vllm-project/vllm docs/features/sleep_mode.md and
vllm/entrypoints/serve/sleep/api_router.py @ 09cb327f; /server_info from vllm/entrypoints/serve/dev).

- What it holds: `GET /v1/models` -> {"object": "list", "data": [{"id", "root", "max_model_len", ...}]} (one
  model per server) and `GET /is_sleeping` -> {"is_sleeping": bool}. Asleep, it holds only what its
  processes keep (their CUDA context, CUDA graphs): nothing is listed.
- Free: `POST /sleep?level=1` -> HTTP 200 (an empty body in most versions): the weights move to host RAM,
  the KV cache is dropped. vLLM answers once the engine is asleep; eviction still checks it through NVML.
- Bring back: `POST /wake_up` -> HTTP 200; the same weights come back from host RAM (seconds, no disk).
- Requirements: the sleep endpoints exist only with `VLLM_SERVER_DEV_MODE=1` in the server's environment
  (else HTTP 404), and free something only when the server was started with `--enable-sleep-mode` (else
  /sleep frees nothing and still answers 200). The first is seen at /is_sleeping; the second at
  `GET /server_info?config_format=json` (dev mode too): `vllm_config.model_config.enable_sleep_mode`. Either
  missing: the listing fails with a message naming what to add, and vLLM is not managed.
- With `--api-key`, requests carry the `api_key` of the `[[servers]]` entry as a bearer token.
- The process stays while asleep: a free expects back the weights and cache (what its processes hold beyond
  what they keep asleep), not the whole process.
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

SLEEP_TIMEOUT_S = 120.0  # moving tens of GB of weights to host RAM takes a while; vLLM answers when asleep


class VllmHolder(ProcessStaysHolder):
    name = "vllm"
    display_name = "vLLM"
    kept_per_process_bytes = 1 * GiB  # CUDA context, CUDA graphs and NCCL buffers stay while asleep

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sleep_mode_checked = False

    def _list_models(self) -> list[ServedModel]:
        try:
            return self._list()
        except ServerBadAnswer:
            raise
        except Exception:
            self._sleep_mode_checked = False  # a restarted server may have other flags
            raise

    def _list(self) -> list[ServedModel]:
        where = f"vLLM at {self.config.url}"
        names = self.openai_model_names(where)
        answer = self.call("GET", "/is_sleeping", ok_statuses=(200, 404))
        if answer.status == 404:
            self._sleep_mode_checked = False
            raise self.unmanageable(
                f"{where} has no sleep endpoints (GET /is_sleeping: HTTP 404): start it with "
                "VLLM_SERVER_DEV_MODE=1 in its environment and --enable-sleep-mode, so that VRAM Steward "
                "can put it to sleep"
            )
        state = answer.json(f"{where} (GET /is_sleeping)")
        require(
            isinstance(state, dict) and isinstance(state.get("is_sleeping"), bool),
            f"{where} (GET /is_sleeping) answered without 'is_sleeping': {str(state)[:80]!r}",
        )
        if not self._sleep_mode_checked:
            self._check_sleep_mode(where)
        self.manageable()
        held = self.held_by_runners()
        if state["is_sleeping"]:
            self.learn_kept(held)
            return []
        return [ServedModel(name=names[0], state=ModelState.RESIDENT, vram_bytes=self.model_bytes(held))]

    def _check_sleep_mode(self, where: str) -> None:
        """Whether the server was started with --enable-sleep-mode (without it, /sleep frees nothing)."""
        answer = self.call("GET", "/server_info?config_format=json", ok_statuses=(200, 404))
        if answer.status == 200:
            info = answer.json(f"{where} (GET /server_info)")
            config = info.get("vllm_config") if isinstance(info, dict) else None
            enabled: object = None
            if isinstance(config, dict) and isinstance(config.get("model_config"), dict):
                enabled = config["model_config"].get("enable_sleep_mode")
            elif isinstance(config, str) and "enable_sleep_mode=" in config:  # older: the text form
                enabled = "enable_sleep_mode=True" in config
            if enabled is False:
                raise self.unmanageable(
                    f"{where} was started without --enable-sleep-mode: its /sleep would free nothing; "
                    "restart it with --enable-sleep-mode (and VLLM_SERVER_DEV_MODE=1)"
                )
        self._sleep_mode_checked = True  # an older vLLM without /server_info: NVML tells after a free

    def _unload(self, model: str) -> None:
        answer = self.call("POST", "/sleep?level=1", timeout_s=SLEEP_TIMEOUT_S, ok_statuses=(200, 404))
        if answer.status == 404:
            raise self.unmanageable(
                f"vLLM at {self.config.url} has no /sleep (HTTP 404): start it with VLLM_SERVER_DEV_MODE=1 "
                "and --enable-sleep-mode"
            )

    def _load(self, model: str) -> None:
        self.call("POST", "/wake_up", timeout_s=LOAD_TIMEOUT_S)
