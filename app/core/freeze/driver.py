"""The CUDA driver's checkpoint API through ctypes over libcuda.so.1 (driver r570+, Linux x86-64).

The controller (this process) only calls `cuInit(0)`: no context is created, so it holds no VRAM. Each call
blocks until the driver is done (a checkpoint moves about 2 GB/s, a restore 4-5 GB/s; lock and unlock take
milliseconds, unless lock waits for queued work to drain): call them from the freezer's own thread. One lock
serializes the calls of a driver object, so several threads may share it.

Only app/core/freeze calls the checkpoint entry points (DESIGN.md, "Rules of the house").
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from app.core.freeze.api import CheckpointError, FreezingUnavailable, ProcessState

logger = logging.getLogger(__name__)

LIBRARY = "libcuda.so.1"
NO_DRIVER = "no NVIDIA driver"
NEEDS_R570 = "freezing unavailable (driver r570 or later needed)"
CHECKPOINT_SYMBOLS = (
    "cuCheckpointProcessGetState",
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
)


class _LockArgs(ctypes.Structure):
    """CUcheckpointLockArgs (cuda.h): a timeout, then reserved words that must be zero (64 bytes)."""

    _fields_ = [
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    ]


class CudaCheckpointDriver:
    """CheckpointDriver (app.core.freeze.api) over libcuda.so.1. Build it with `open_driver()`."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        """`lib` must already hold the checkpoint symbols and have answered cuInit(0) with success."""
        self.path = path  # what was loaded, for logs
        self._lock = threading.Lock()
        self._error_name_fn = _function(
            lib, "cuGetErrorName", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        )
        self._get_state = _function(
            lib, "cuCheckpointProcessGetState", [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        )
        self._lock_fn = _function(lib, "cuCheckpointProcessLock", [ctypes.c_int, ctypes.POINTER(_LockArgs)])
        self._checkpoint = _function(lib, "cuCheckpointProcessCheckpoint", [ctypes.c_int, ctypes.c_void_p])
        self._restore = _function(lib, "cuCheckpointProcessRestore", [ctypes.c_int, ctypes.c_void_p])
        self._unlock = _function(lib, "cuCheckpointProcessUnlock", [ctypes.c_int, ctypes.c_void_p])
        self.cuda_version = _driver_version(
            lib
        )  # e.g. 12080 for CUDA 12.8 (not the r5xx number); None: unknown

    # ---- the CheckpointDriver protocol ---------------------------------------------------------------

    def state(self, pid: int) -> ProcessState:
        """cuCheckpointProcessGetState."""
        value = ctypes.c_int(-1)
        with self._lock:
            code = int(self._get_state(pid, ctypes.byref(value)))
            if code:
                raise self._error("state", pid, code)
        try:
            return ProcessState(value.value)
        except ValueError:
            raise CheckpointError("state", pid, -1, f"unknown process state {value.value}") from None

    def lock(self, pid: int, timeout_ms: int) -> None:
        """cuCheckpointProcessLock: waits for the process's queued work (at most timeout_ms; 0: no limit),
        then blocks its further CUDA calls. RUNNING -> LOCKED; on a timeout it stays RUNNING."""
        args = _LockArgs()
        args.timeoutMs = max(0, int(timeout_ms))
        self._call("lock", pid, lambda: self._lock_fn(pid, ctypes.byref(args)))

    def checkpoint(self, pid: int) -> None:
        """cuCheckpointProcessCheckpoint: device memory to host memory, VRAM freed. LOCKED -> CHECKPOINTED.
        Refused with CUDA_ERROR_NOT_SUPPORTED (managed memory...), the process stays LOCKED: unlock it."""
        self._call("checkpoint", pid, lambda: self._checkpoint(pid, None))

    def restore(self, pid: int) -> None:
        """cuCheckpointProcessRestore: memory back to the device. CHECKPOINTED -> LOCKED. A restore that runs
        out of VRAM (CUDA_ERROR_OUT_OF_MEMORY) leaves the process stuck: never call it without the room."""
        self._call("restore", pid, lambda: self._restore(pid, None))

    def unlock(self, pid: int) -> None:
        """cuCheckpointProcessUnlock: LOCKED -> RUNNING."""
        self._call("unlock", pid, lambda: self._unlock(pid, None))

    # ---- helpers ---------------------------------------------------------------------------------------

    def error_name(self, code: int) -> str:
        """cuGetErrorName ("CUDA_ERROR_OUT_OF_MEMORY"); "CUDA_ERROR_<code>" for a code it does not know."""
        return _error_name(self._error_name_fn, code)

    def _call(self, step: str, pid: int, call: Callable[[], Any]) -> None:
        with self._lock:
            code = int(call())
            if code:
                raise self._error(step, pid, code)

    def _error(self, step: str, pid: int, code: int) -> CheckpointError:
        error = CheckpointError(step, pid, code, self.error_name(code))
        logger.debug("%s", error)
        return error


def open_driver(library: str | os.PathLike[str] | None = None) -> CudaCheckpointDriver:
    """Load libcuda.so.1 (or `library`, for tests), check it has the checkpoint API and call cuInit(0) once.

    Raises FreezingUnavailable with a sentence for the user: "no NVIDIA driver ..." (not Linux, or no
    libcuda.so.1), "freezing unavailable (driver r570 or later needed)" (no cuCheckpointProcess* symbols),
    or "the NVIDIA driver does not start: cuInit failed with NAME (CODE)".
    """
    path = LIBRARY if library is None else os.fspath(library)
    if not sys.platform.startswith("linux"):
        raise FreezingUnavailable(f"{NO_DRIVER}: freezing needs Linux and NVIDIA's driver")
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise FreezingUnavailable(f"{NO_DRIVER} ({path} cannot be loaded: {exc})") from exc
    missing = [name for name in CHECKPOINT_SYMBOLS if not hasattr(lib, name)]
    if missing:
        raise FreezingUnavailable(NEEDS_R570)
    if not hasattr(lib, "cuInit") or not hasattr(lib, "cuGetErrorName"):
        raise FreezingUnavailable(f"{NO_DRIVER} ({path} is not a CUDA driver library)")
    init = _function(lib, "cuInit", [ctypes.c_uint])
    code = int(init(0))
    if code:
        name = _error_name(
            _function(lib, "cuGetErrorName", [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]), code
        )
        raise FreezingUnavailable(f"the NVIDIA driver does not start: cuInit failed with {name} ({code})")
    driver = CudaCheckpointDriver(lib, path)
    logger.info("CUDA checkpoint API ready (%s, CUDA %s)", path, driver.cuda_version)
    return driver


def _function(lib: ctypes.CDLL, name: str, argtypes: list[Any]) -> Any:
    function = getattr(lib, name)
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def _error_name(function: Any, code: int) -> str:
    text = ctypes.c_char_p()
    if int(function(code, ctypes.byref(text))) == 0 and text.value:
        return text.value.decode("ascii", "replace")
    return f"CUDA_ERROR_{code}"


def _driver_version(lib: ctypes.CDLL) -> int | None:
    if not hasattr(lib, "cuDriverGetVersion"):
        return None
    version = ctypes.c_int(0)
    if int(_function(lib, "cuDriverGetVersion", [ctypes.POINTER(ctypes.c_int)])(ctypes.byref(version))):
        return None
    return version.value
