"""Messages between the residency manager and its host, over a multiprocessing Pipe (pickled dataclasses).

Requests go to the host; replies and notices come back. Every request but Shutdown names a model, and the
host answers each one exactly once (Sealed | Verified | Freed | Tampered | Failed); Progress may come before.
Errors cross the pipe as (code, message, details) and are rebuilt as the same VramError classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.errors import (
    CudaAllocationFailed,
    GpuUnavailable,
    InvalidInput,
    ModelFileError,
    VramError,
)
from app.core.residency.digest import Manifest

# --- requests (manager -> host) ------------------------------------------------------------------


@dataclass(frozen=True)
class SealRequest:
    model: str
    path: str
    chunk_size_bytes: int
    segment_bytes: int
    staging_bytes: int = 64 * 1024 * 1024
    staging_buffers: int = 0
    reader_threads: int = 0
    hash_threads: int = 0
    device_digest: bool = True
    map_files: bool = False


@dataclass(frozen=True)
class VerifyRequest:
    model: str


@dataclass(frozen=True)
class FreeRequest:
    """Free the model's memory; cancels its seal if one is in flight."""

    model: str


@dataclass(frozen=True)
class TamperRequest:
    """Tests only: XOR one byte of the model in device memory with `xor_mask`, to simulate corruption."""

    model: str
    offset: int
    xor_mask: int = 0xFF


@dataclass(frozen=True)
class ShutdownRequest:
    """Free everything and exit."""


Request = SealRequest | VerifyRequest | FreeRequest | TamperRequest | ShutdownRequest

# --- replies and notices (host -> manager) -------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The host's device is open (on CUDA: the context exists)."""

    pid: int
    gpu: int


@dataclass(frozen=True)
class Progress:
    model: str
    done_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Sealed:
    model: str
    manifest: Manifest
    seconds: float


@dataclass(frozen=True)
class Verified:
    model: str
    chunk_digests: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class Freed:
    model: str
    nbytes: int  # 0 when the model held nothing


@dataclass(frozen=True)
class Tampered:
    model: str
    offset: int


@dataclass(frozen=True)
class Failed:
    """A request failed. `request` is the request's class name ("SealRequest", ..., or "startup")."""

    model: str
    request: str
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    suggestions: tuple[str, ...] = ()

    def error(self) -> VramError:
        error = error_from_wire(self.code, self.message, self.details)
        if self.suggestions:
            error.suggestions = list(self.suggestions)
        return error


@dataclass(frozen=True)
class Bye:
    """Sent just before a clean exit."""


Reply = Ready | Progress | Sealed | Verified | Freed | Tampered | Failed | Bye


def failed(model: str, request: object, exc: BaseException) -> Failed:
    """The Failed reply for an exception raised while serving `request`."""
    name = request if isinstance(request, str) else type(request).__name__
    if isinstance(exc, VramError):
        return Failed(model, name, exc.code, exc.message, dict(exc.details), tuple(exc.suggestions))
    return Failed(model, name, "host_error", f"{type(exc).__name__}: {exc}", {})


def error_from_wire(code: str, message: str, details: dict[str, Any]) -> VramError:
    """Rebuild the VramError a host raised, from its (code, message, details)."""
    try:
        if code == ModelFileError.code:
            return ModelFileError(path=str(details["path"]), problem=str(details["problem"]))
        if code == CudaAllocationFailed.code:
            return CudaAllocationFailed(
                gpu=int(details["gpu"]),
                model=str(details["model"]),
                requested_bytes=int(details["requested_bytes"]),
                cause=str(details["cause"]),
            )
        if code == GpuUnavailable.code:
            gpu = details.get("gpu")
            return GpuUnavailable(reason=str(details["reason"]), gpu=None if gpu is None else int(gpu))
        if code == InvalidInput.code:
            return InvalidInput(message)
    except (KeyError, TypeError, ValueError):
        pass
    error = VramError(message, details=details)
    error.code = code
    if code == "seal_cancelled":
        error.retriable = True
    return error
