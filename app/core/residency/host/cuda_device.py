"""CudaDevice: one GPU's memory through CuPy. The ONLY module that imports CuPy, and only inside the host.

Model bytes live in dedicated `cupy.cuda.Memory` blocks (their own cudaMalloc, never CuPy's pool, which
would keep freed blocks); staging buffers are pinned host memory, and copies run asynchronously on one
non-blocking stream, with an event per staging buffer that says when the buffer may be reused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from app.core.errors import GpuUnavailable
from app.core.residency.seal import DeviceOutOfMemory

logger = logging.getLogger(__name__)


def _import_cupy(gpu: int) -> Any:
    """Import CuPy with only `gpu` visible (in NVML's order), so CUDA device 0 is that GPU in every thread."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    try:
        import cupy
    except ImportError as exc:
        raise GpuUnavailable(
            reason=f"CuPy is not installed ({exc})", gpu=gpu, suggestion="pip install cupy-cuda12x"
        ) from None
    return cupy


class CudaDevice:
    def __init__(self, gpu: int) -> None:
        self.gpu = gpu
        self.pid = os.getpid()
        cp = _import_cupy(gpu)
        self._cp = cp
        try:
            cp.cuda.set_allocator(None)  # no device pool: anything CuPy allocates is freed at once
            cp.cuda.Device(0).use()
            cp.cuda.runtime.memGetInfo()  # creates the context now, so Ready means "context exists"
            self._stream = cp.cuda.Stream(non_blocking=True)
        except Exception as exc:
            raise GpuUnavailable(reason=f"CUDA could not start: {exc}", gpu=gpu) from None
        self._blocks: dict[int, Any] = {}
        self._next_block = 1
        self._pinned: list[Any] = []
        self._views: list[memoryview] = []
        self._events: dict[int, Any] = {}

    def allocate(self, nbytes: int) -> int:
        cp = self._cp
        try:
            memory = cp.cuda.Memory(nbytes)
        except cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceOutOfMemory(str(exc)) from None
        except cp.cuda.runtime.CUDARuntimeError as exc:
            if "out of memory" in str(exc).lower() or "memoryallocation" in str(exc).lower():
                raise DeviceOutOfMemory(str(exc)) from None
            raise
        block = self._next_block
        self._next_block += 1
        self._blocks[block] = memory
        return block

    def free(self, block: int) -> None:
        self._stream.synchronize()  # never free under a copy in flight
        del self._blocks[block]  # the last reference: cudaFree happens here

    def open_staging(self, count: int, nbytes: int) -> list[memoryview]:
        import numpy

        self.close_staging()
        for _ in range(count):
            pinned = self._cp.cuda.alloc_pinned_memory(nbytes)
            self._pinned.append(pinned)
            array: Any = numpy.frombuffer(pinned, dtype=numpy.uint8, count=nbytes)
            self._views.append(memoryview(array))
        return list(self._views)

    def close_staging(self) -> None:
        if self._pinned:
            self._stream.synchronize()
        self._events.clear()
        self._views.clear()
        self._pinned.clear()
        self._cp.get_default_pinned_memory_pool().free_all_blocks()

    def _copy(self, dst: int, src: int, nbytes: int, kind: int, buffer: int) -> None:
        cp = self._cp
        cp.cuda.runtime.memcpyAsync(dst, src, nbytes, kind, self._stream.ptr)
        event = cp.cuda.Event(block=False, disable_timing=True)
        event.record(self._stream)
        self._events[buffer] = event

    def copy_to_device(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
        self._copy(
            self._blocks[block].ptr + offset,
            self._pinned[buffer].ptr,
            nbytes,
            self._cp.cuda.runtime.memcpyHostToDevice,
            buffer,
        )

    def copy_to_host(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
        self._copy(
            self._pinned[buffer].ptr,
            self._blocks[block].ptr + offset,
            nbytes,
            self._cp.cuda.runtime.memcpyDeviceToHost,
            buffer,
        )

    def wait_buffer(self, buffer: int) -> None:
        event = self._events.pop(buffer, None)
        if event is not None:
            event.synchronize()

    def write_byte(self, block: int, offset: int, value: int) -> None:
        import numpy

        one = numpy.array([value & 0xFF], dtype=numpy.uint8)
        self._stream.synchronize()
        self._cp.cuda.runtime.memcpy(
            self._blocks[block].ptr + offset, one.ctypes.data, 1, self._cp.cuda.runtime.memcpyHostToDevice
        )

    def read_byte(self, block: int, offset: int) -> int:
        import numpy

        one = numpy.zeros(1, dtype=numpy.uint8)
        self._stream.synchronize()
        self._cp.cuda.runtime.memcpy(
            one.ctypes.data, self._blocks[block].ptr + offset, 1, self._cp.cuda.runtime.memcpyDeviceToHost
        )
        return int(one[0])

    def close(self) -> None:
        try:
            self._stream.synchronize()
        finally:
            self.close_staging()
            self._blocks.clear()
            self._cp.get_default_memory_pool().free_all_blocks()


@dataclass(frozen=True)
class CudaDeviceFactory:
    """Picklable: the spawned host calls it to open GPU `gpu` (importing CuPy there, never in the app)."""

    gpu: int

    def __call__(self) -> CudaDevice:
        return CudaDevice(self.gpu)
