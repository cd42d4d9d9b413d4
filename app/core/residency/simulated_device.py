"""SimulatedDevice: a GPU made of host memory, for tests, demos and `--simulate`.

Blocks are bytearrays; copies happen at once. When given a SimulatedBackend, every block is also accounted on
the simulated GPU under the host's pid (`allocate`/`free`), so telemetry, the ledger and the policy see the
model bytes exactly as NVML would show a real host's allocations, and a full simulated GPU fails the
allocation as CUDA would.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

from app.core.residency.digest import chunk_digest
from app.core.residency.seal import DeviceOutOfMemory, FileMappingUnavailable

logger = logging.getLogger(__name__)

HOST_PROCESS_NAME = "vram-steward-host"


class SimulatedGpuMemory(Protocol):
    """The part of SimulatedBackend (app/core/gpu/simulated.py) that accounts allocations."""

    def allocate(self, gpu: int, pid: int, name: str, nbytes: int) -> None: ...

    def free(self, gpu: int, pid: int, nbytes: int | None = None) -> None: ...


class SimulatedDevice:
    """Device memory in host bytearrays; see the module docstring."""

    def __init__(
        self,
        gpu: int,
        *,
        backend: SimulatedGpuMemory | None = None,
        pid: int = 0,
        device_digest: bool = False,
        map_files: bool = True,
    ) -> None:
        """`device_digest`: hash chunks "on the device" (as the CUDA kernel does), so that path of seal and
        verify runs without a GPU too. `map_files`: copy files straight into blocks as CUDA does from a
        page-locked mapping (used with device_digest); False makes such a seal fall back to staging."""
        self.gpu = gpu
        self.pid = pid
        self._backend = backend
        self._device_digest = device_digest
        self._map_files = map_files
        self._mapped_fd: int | None = None
        self.mapped_copies = 0  # windows copied straight from a file (tests read it)
        self._digests: list[str] = []
        self._blocks: dict[int, bytearray] = {}
        self._next_block = 1
        self._staging: list[bytearray] = []
        self.allocated_bytes = 0

    def allocate(self, nbytes: int) -> int:
        if self._backend is not None:
            try:
                self._backend.allocate(self.gpu, self.pid, HOST_PROCESS_NAME, nbytes)
            except Exception as exc:  # SimulatedOutOfMemory (kept duck-typed: no import of the backend here)
                if type(exc).__name__ == "SimulatedOutOfMemory" or isinstance(exc, MemoryError):
                    raise DeviceOutOfMemory(str(exc)) from None
                raise
        try:
            block = bytearray(nbytes)
        except MemoryError as exc:
            if self._backend is not None:
                self._backend.free(self.gpu, self.pid, nbytes)
            raise DeviceOutOfMemory(f"host memory: {exc}") from None
        block_id = self._next_block
        self._next_block += 1
        self._blocks[block_id] = block
        self.allocated_bytes += nbytes
        return block_id

    def free(self, block: int) -> None:
        data = self._blocks.pop(block)
        self.allocated_bytes -= len(data)
        if self._backend is not None:
            self._backend.free(self.gpu, self.pid, len(data))

    def open_staging(self, count: int, nbytes: int) -> list[memoryview]:
        self._staging = [bytearray(nbytes) for _ in range(count)]
        return [memoryview(b) for b in self._staging]

    def close_staging(self) -> None:
        self._staging = []

    def copy_to_device(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
        self._blocks[block][offset : offset + nbytes] = memoryview(self._staging[buffer])[:nbytes]

    def copy_to_host(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
        memoryview(self._staging[buffer])[:nbytes] = memoryview(self._blocks[block])[offset : offset + nbytes]

    def wait_buffer(self, buffer: int) -> None:
        return None  # copies are synchronous here

    def open_file_map(self, fd: int, nbytes: int) -> None:
        if not self._map_files:
            raise FileMappingUnavailable("this SimulatedDevice does not map files (map_files=False)")
        self._mapped_fd = fd

    def copy_file_to_device(self, block: int, offset: int, file_offset: int, nbytes: int, slot: int) -> None:
        if self._mapped_fd is None:
            raise FileMappingUnavailable("no file is mapped")
        data = os.pread(self._mapped_fd, nbytes, file_offset)  # not mmap: a shrunk file must not SIGBUS us
        if len(data) != nbytes:  # as cudaHostRegister fails on pages past the end of a shrunk file
            raise FileMappingUnavailable(f"the window at {file_offset} is past the end of the file")
        self._blocks[block][offset : offset + nbytes] = data
        self.mapped_copies += 1

    def close_file_map(self) -> None:
        self._mapped_fd = None

    def write_byte(self, block: int, offset: int, value: int) -> None:
        self._blocks[block][offset] = value

    def read_byte(self, block: int, offset: int) -> int:
        return self._blocks[block][offset]

    def can_digest(self) -> bool:
        return self._device_digest

    def start_digest(self, block: int, nbytes: int, chunk_size_bytes: int) -> None:
        if not self._device_digest:
            raise NotImplementedError("this SimulatedDevice hashes on the CPU (device_digest=False)")
        data = memoryview(self._blocks[block])[:nbytes]
        self._digests.extend(
            chunk_digest(data[i : i + chunk_size_bytes]) for i in range(0, nbytes, chunk_size_bytes)
        )

    def collect_digests(self) -> list[str]:
        digests, self._digests = self._digests, []
        return digests

    def close(self) -> None:
        for block in list(self._blocks):
            self.free(block)
        self._staging = []


@dataclass(frozen=True)
class HostMemoryDeviceFactory:
    """A picklable factory for a spawned host process with host-memory "VRAM" (no GPU, no backend): proves
    that the real spawn path works on machines without a GPU."""

    gpu: int = 0

    def __call__(self) -> SimulatedDevice:
        import os

        return SimulatedDevice(self.gpu, pid=os.getpid())
