"""The GpuBackend protocol and the choice of backend at start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from app.core.gpu.snapshot import TelemetrySnapshot

logger = logging.getLogger(__name__)


@runtime_checkable
class GpuBackend(Protocol):
    """Where telemetry comes from. `sample()` never raises for GPU trouble: it reports it in the snapshot."""

    name: str

    def sample(self) -> TelemetrySnapshot: ...

    def probe(self) -> tuple[object, ...] | None:
        """A cheap fingerprint of what the next sample would show, for the engine's idle path: while it
        reads the same, nothing a decision depends on has moved (a foreign allocation always moves it).
        None: this backend cannot tell cheaply, so the engine samples in full every time."""
        ...

    def close(self) -> None: ...


def open_backend(simulate: Path | None = None) -> GpuBackend:
    """The NVML backend, or the simulator for `--simulate SCENARIO`, or NullBackend when NVML has no GPU."""
    if simulate is not None:
        from app.core.gpu.simulated import SimulatedBackend

        return SimulatedBackend.from_file(simulate)
    from app.core.gpu.null import NullBackend
    from app.core.gpu.nvml import NvmlBackend
    from app.core.gpu.snapshot import BackendState

    backend = NvmlBackend()
    first = backend.sample()
    if first.state in (BackendState.NO_DRIVER,) or (first.state == BackendState.OK and not first.gpus):
        logger.info("no NVIDIA GPU: %s", first.message or "NVML reports no GPU")
        backend.close()
        return NullBackend(message=first.message or "NVML reports no NVIDIA GPU")
    return backend
