"""Frozen telemetry records. Every size is in bytes and says so in its name; a value NVML cannot give is
None, with the reason in `unavailable` (as nvitop's NA), never an exception or a made-up zero."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ProcessKind(enum.StrEnum):
    """Which NVML list named the process: compute (CUDA), graphics (OpenGL/Vulkan) or both."""

    COMPUTE = "compute"
    GRAPHICS = "graphics"
    BOTH = "both"

    def merge(self, other: ProcessKind) -> ProcessKind:
        return self if self == other else ProcessKind.BOTH


class GpuState(enum.StrEnum):
    OK = "ok"
    LOST = "lost"  # fell off the bus (NVML_ERROR_GPU_IS_LOST); needs a reboot or a reset
    ERROR = "error"  # queries fail for another reason; retried with backoff


class BackendState(enum.StrEnum):
    OK = "ok"
    NO_DRIVER = "no_driver"  # no libnvidia-ml or the kernel driver is not loaded
    DRIVER_MISMATCH = "driver_mismatch"  # the driver was updated under us: restart the app or reboot
    NO_PERMISSION = "no_permission"
    ERROR = "error"  # NVML fails as a whole; retried with backoff
    SIMULATED = "simulated"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """One process seen on a GPU. `nvidia-smi --query-compute-apps=pid,process_name,used_memory`."""

    pid: int
    name: str
    used_bytes: int | None
    kind: ProcessKind
    used_unavailable_reason: str | None = None  # why used_bytes is None (e.g. "not available under WDDM")

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "used_bytes": self.used_bytes,
            "kind": str(self.kind),
            "role": None,
        }


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """One GPU at one instant. `nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,memory.free,
    memory.reserved,temperature.gpu,utilization.gpu`."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    reserved_bytes: int | None  # driver-reserved (NVML memory v2); None where only v1 exists
    temperature_c: int | None
    utilization_percent: int | None
    processes: tuple[GpuProcess, ...] = ()
    state: GpuState = GpuState.OK
    message: str | None = None  # for a GPU that is lost or failing: what happened and what to do
    unavailable: tuple[tuple[str, str], ...] = ()  # (field, reason) for each None above

    def process(self, pid: int) -> GpuProcess | None:
        return next((p for p in self.processes if p.pid == pid), None)

    def reason(self, field_name: str) -> str | None:
        return dict(self.unavailable).get(field_name)


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """Everything the backend saw in one sample."""

    backend: str  # "nvml" | "simulated" | "none"
    state: BackendState
    taken_at: float  # the backend clock's time (monotonic seconds in the app, scenario seconds in tests)
    gpus: tuple[GpuSnapshot, ...] = ()
    message: str | None = None  # for a state other than OK: what is wrong and what to do
    driver_version: str | None = None
    game_signals: tuple[str, ...] = field(default=())  # simulated game signals active now (scenario only)

    def gpu(self, index: int) -> GpuSnapshot | None:
        return next((g for g in self.gpus if g.index == index), None)
