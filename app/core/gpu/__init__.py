"""GPU telemetry: immutable snapshots, the GpuBackend protocol and its backends (NVML, simulated, none)."""

from app.core.gpu.backend import GpuBackend, open_backend
from app.core.gpu.snapshot import (
    BackendState,
    GpuProcess,
    GpuSnapshot,
    GpuState,
    ProcessKind,
    TelemetrySnapshot,
)

__all__ = [
    "BackendState",
    "GpuBackend",
    "GpuProcess",
    "GpuSnapshot",
    "GpuState",
    "ProcessKind",
    "TelemetrySnapshot",
    "open_backend",
]
