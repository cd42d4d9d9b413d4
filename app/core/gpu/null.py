"""NullBackend: the machine has no NVIDIA GPU (or no driver). Reports that plainly, every time."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.gpu.snapshot import BackendState, TelemetrySnapshot

NO_GPU_MESSAGE = "No NVIDIA GPU found (NVIDIA driver not found). Use --simulate SCENARIO to try the app."


class NullBackend:
    name = "none"

    def __init__(self, message: str = NO_GPU_MESSAGE, clock: Callable[[], float] = time.monotonic) -> None:
        self._message = message
        self._clock = clock

    def sample(self) -> TelemetrySnapshot:
        return TelemetrySnapshot(
            backend=self.name, state=BackendState.NO_DRIVER, taken_at=self._clock(), message=self._message
        )

    def probe(self) -> tuple[object, ...] | None:
        return ()  # nothing ever moves on a machine with no GPU

    def close(self) -> None:
        pass
