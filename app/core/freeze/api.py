"""The driver's checkpoint API as the freezer sees it: a small protocol, its process states and its errors.

The real implementation is `app.core.freeze.driver.CudaCheckpointDriver` (ctypes over libcuda.so.1); tests use
the stand-in libcuda.so.1 built at test time, or any object with these methods. Every call blocks (a
checkpoint of 8 GiB takes seconds): the freezer calls them on its own thread, never the engine's.
"""

from __future__ import annotations

import enum
from typing import Protocol


class ProcessState(enum.IntEnum):
    """CUprocessState (cuda.h, CUDA 12.8+)."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


class CheckpointError(Exception):
    """A checkpoint call failed: which step, for which process, with the driver's code and name."""

    def __init__(self, step: str, pid: int, code: int, name: str) -> None:
        super().__init__(f"{step} of pid {pid} failed: {name} ({code})")
        self.step = step
        self.pid = pid
        self.code = code
        self.name = name

    @property
    def out_of_memory(self) -> bool:
        return self.code == CUDA_ERROR_OUT_OF_MEMORY

    @property
    def not_permitted(self) -> bool:
        """Another user's process (the driver answers CUDA_ERROR_OPERATING_SYSTEM without root)."""
        return self.code == CUDA_ERROR_OPERATING_SYSTEM


class FreezingUnavailable(Exception):
    """This machine cannot freeze processes: no NVIDIA driver, or one without the checkpoint API."""


CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_OUT_OF_MEMORY = 2
CUDA_ERROR_NOT_INITIALIZED = 3
CUDA_ERROR_OPERATING_SYSTEM = 304
CUDA_ERROR_ILLEGAL_STATE = 401  # a step in the wrong state (e.g. unlock of a stuck process)
CUDA_ERROR_NOT_SUPPORTED = 801
CUDA_ERROR_TIMEOUT = 909


class CheckpointDriver(Protocol):
    """The five entry points the freezer needs (cuCheckpointProcessGetState / Lock / Checkpoint / Restore /
    Unlock). Each raises CheckpointError on a driver error."""

    def state(self, pid: int) -> ProcessState: ...

    def lock(self, pid: int, timeout_ms: int) -> None: ...

    def checkpoint(self, pid: int) -> None: ...

    def restore(self, pid: int) -> None: ...

    def unlock(self, pid: int) -> None: ...
