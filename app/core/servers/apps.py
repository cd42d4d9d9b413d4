"""What the adapters for AI apps share (ComfyUI, A1111/Forge, InvokeAI, LocalAI, KoboldCpp): these apps hold
VRAM in their own processes and do not always say how much, so what they hold is measured through NVML,
over the processes `find_runners` found for them (see runners.app_processes)."""

from __future__ import annotations

import urllib.parse

from app.core.servers.holder import ServerHolder
from app.core.servers.verify_free import measure
from app.core.units import MiB

HOLDS_MODELS_MIN_BYTES = 64 * MiB  # less than this (allocator crumbs) is not a model held


class AppHolder(ServerHolder):
    """A ServerHolder for an app whose VRAM is its own processes'."""

    def item_name(self) -> str:
        """The one item an app without a model listing shows: "ComfyUI (127.0.0.1:8188)"."""
        return f"{self.display_name} ({urllib.parse.urlsplit(self.config.url).netloc})"

    def _held_by_processes(self) -> int | None:
        """The VRAM its processes hold now, as NVML says; None when it cannot tell (no GPU telemetry, or
        no process of the app found)."""
        runners = self._runners_now()
        if not runners:
            return None
        held = measure(self._backend.sample(), {r.pid for r in runners})
        return None if held is None or not held.visible else held.total_bytes
