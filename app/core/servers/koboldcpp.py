"""The KoboldCpp adapter (LostRuins/koboldcpp koboldcpp.py, KoboldCpp 1.102: the HTTP handler's GET and POST
routes and get_capabilities). Freeing and bringing back need its admin mode: `--admin --admindir <folder>`
(and `--adminpassword`, sent as a bearer token: set `api_key`).

- What it holds: `GET /api/extra/version` -> {"result": "KoboldCpp", "version", "admin": 0 | 1 | 2, ...}
  ("admin": 0 not in admin mode, 1 admin mode, 2 admin mode with a password); `GET /api/v1/model` ->
  {"result": "koboldcpp/<model>"} or {"result": "inactive"} (no text model loaded).
- Free: `POST /api/admin/reload_config {"filename": "unload_model"}` -> {"success": true}: KoboldCpp
  restarts its server process without a model (the old process exits: verified through NVML). Outside
  admin mode, without --admindir or with a wrong password it answers {"success": false}.
- Bring back: `POST /api/admin/reload_config {"filename": F}` with the config it ran before: F is a
  .kcpps/.kcppt/.gguf file of its admindir, listed by `GET /api/admin/list_options` -> [files...,
  "unload_model"]. F is the file its process was started with (`--config`, `--model`) or named like the
  model; KoboldCpp restarts with it, and the load waits until `/api/v1/model` names the model again.
- Processes: `koboldcpp` / `koboldcpp.py` and its children (admin mode runs the server in a child that a
  reload replaces).
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from app.core.holders import ModelState
from app.core.servers.apps import AppHolder
from app.core.servers.base import ServerBadAnswer, ServerUnreachable
from app.core.servers.holder import LOAD_TIMEOUT_S, UNLOAD_TIMEOUT_S, ServedModel, require

logger = logging.getLogger(__name__)

NO_MODEL = "inactive"
UNLOAD_TARGET = "unload_model"
RESTART_POLL_S = 1.0
RESTART_TIMEOUT_S = 60.0  # a restart without a model
CONFIG_SUFFIXES = (".kcpps", ".kcppt", ".gguf")


def admin_flag_message(url: str) -> str:
    return (
        f"KoboldCpp at {url} is not in admin mode, so it cannot be asked to free its VRAM: start it with "
        "--admin --admindir <a folder holding the .kcpps config (or .gguf) it should reload>"
    )


class KoboldCppHolder(AppHolder):
    name = "koboldcpp"
    display_name = "KoboldCpp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restore_files: dict[str, str] = {}  # model -> the admindir file to reload it with

    def _list_models(self) -> list[ServedModel]:
        caps = self.client.get_json("/api/extra/version")
        where = f"KoboldCpp at {self.config.url} (GET /api/extra/version)"
        require(
            isinstance(caps, dict) and caps.get("result") == "KoboldCpp",
            f"{where} does not say it is KoboldCpp: {str(caps)[:80]!r}",
        )
        admin = caps.get("admin", 0)
        if not admin:
            raise ServerBadAnswer(admin_flag_message(self.config.url))
        if admin == 2 and not self.config.api_key:
            raise ServerBadAnswer(
                f"KoboldCpp at {self.config.url} has an admin password: set api_key in its [[servers]] "
                "entry to its --adminpassword"
            )
        model = self._current_model()
        if model is None:
            return []
        return [ServedModel(name=model, state=ModelState.RESIDENT, vram_bytes=self._held_by_processes())]

    def _current_model(self) -> str | None:
        data = self.client.get_json("/api/v1/model")
        require(
            isinstance(data, dict) and isinstance(data.get("result"), str),
            f"KoboldCpp at {self.config.url} (GET /api/v1/model) has no 'result': {str(data)[:80]!r}",
        )
        result: str = data["result"]
        return None if result == NO_MODEL else result

    def _reload(self, filename: str, timeout_s: float) -> None:
        data = self.client.post_json("/api/admin/reload_config", {"filename": filename}, timeout_s=timeout_s)
        if not (isinstance(data, dict) and data.get("success") is True):
            raise ServerBadAnswer(
                f"KoboldCpp at {self.config.url} refused to reload {filename!r} ({str(data)[:60]}): it needs "
                "--admin with an existing --admindir holding that file, and api_key set to its "
                "--adminpassword if it has one"
            )

    def _unload(self, model: str) -> None:
        try:
            restore = self._file_to_restore(model)
        except ServerBadAnswer as exc:  # the game comes first: free anyway, and say why at the restore
            logger.warning("koboldcpp: %s", exc.message)
            restore = None
        if restore is not None:
            self._restore_files[model] = restore
        self._reload(UNLOAD_TARGET, UNLOAD_TIMEOUT_S)
        self._wait_for(None, RESTART_TIMEOUT_S)  # it restarts without the model; answers again soon

    def _wait_for(self, model: str | None, timeout_s: float) -> bool:
        """Wait (on this background thread) until `/api/v1/model` names `model` (None: no model), through
        the restart's refused connections; False when it did not within `timeout_s`."""
        deadline = self._clock() + timeout_s
        while self._clock() < deadline:
            try:
                if self._current_model() == model:
                    return True
            except ServerUnreachable:
                pass
            self._sleep(RESTART_POLL_S)
        return False

    def _load(self, model: str) -> None:
        filename = self._restore_files.get(model) or self._file_to_restore(model)
        if filename is None:
            raise ServerBadAnswer(
                f"KoboldCpp at {self.config.url}: none of the files in its --admindir matches {model} "
                f"(looked for its --config or --model file, or {_bare(model)}.kcpps/.kcppt/.gguf): put the "
                "config it runs with there"
            )
        self._reload(filename, UNLOAD_TIMEOUT_S)
        if not self._wait_for(model, LOAD_TIMEOUT_S):  # it restarts, then loads the model
            raise ServerUnreachable(f"KoboldCpp at {self.config.url} did not load {model} again in time")

    def _file_to_restore(self, model: str) -> str | None:
        """The admindir file that runs `model`: the one its process was started with, or named like it."""
        options = self.client.get_json("/api/admin/list_options")
        require(
            isinstance(options, list),
            f"KoboldCpp at {self.config.url} (GET /api/admin/list_options) is not a list: "
            f"{str(options)[:80]!r}",
        )
        available = {o for o in options if isinstance(o, str) and o != UNLOAD_TARGET}
        wanted: list[str] = []
        for runner in self._runners_now():
            wanted += _started_with(runner.cmdline)
        wanted += [_bare(model) + suffix for suffix in CONFIG_SUFFIXES]
        return next((w for w in wanted if w in available), None)


def _bare(model: str) -> str:
    return model.removeprefix("koboldcpp/")


def _started_with(cmdline: tuple[str, ...]) -> list[str]:
    """The file names of its `--config` and `--model` arguments (either form: `--config F`, `--config=F`)."""
    out = []
    for index, arg in enumerate(cmdline):
        for option in ("--config", "--model"):
            value = None
            if arg == option and index + 1 < len(cmdline):
                value = cmdline[index + 1]
            elif arg.startswith(option + "="):
                value = arg.split("=", 1)[1]
            if value:
                out.append(posixpath.basename(value.replace("\\", "/")))
    return out
