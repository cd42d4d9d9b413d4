"""CudaDevice: one GPU's memory through CuPy. The ONLY module that imports CuPy, and only inside the host.

Model bytes live in dedicated `cupy.cuda.Memory` blocks (their own cudaMalloc, never CuPy's pool, which
would keep freed blocks); staging buffers are pinned host memory, and copies run asynchronously on one
non-blocking stream, with an event per staging buffer that says when the buffer may be reused.

With device digests, a seal copies straight from the file (seal.py's `_map_in`): the file is mmap'ed
read-only, and each window is page-locked in place with cudaHostRegister(cudaHostRegisterReadOnly) for the
time of its DMA, so the page cache is the staging buffer.

Chunk digests are computed on the GPU when NVRTC can compile the SHA-256 kernel below (one thread per chunk,
on a second stream that waits for the copies): ~200 GB/s for 1 MiB chunks on an H200, and no CPU time.
Where it cannot (no NVRTC), `can_digest()` says so and the seal hashes on the CPU instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from app.core.errors import GpuUnavailable
from app.core.residency.seal import DeviceOutOfMemory, FileMappingUnavailable

logger = logging.getLogger(__name__)

HOST_REGISTER_READ_ONLY = 0x08  # cudaHostRegisterReadOnly (CUDA 11.1+): the GPU only reads the pages
_PROT_READ, _MAP_SHARED = 0x1, 0x01


class _FileMap:
    """A read-only shared mapping of a file through libc's mmap (Python's mmap object hides the address)."""

    def __init__(self, fd: int, nbytes: int) -> None:
        if not sys.platform.startswith("linux"):
            raise FileMappingUnavailable(f"no file mapping for CUDA on {sys.platform}")
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        c_int = ctypes.c_int
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, c_int, c_int, c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        address = libc.mmap(None, nbytes, _PROT_READ, _MAP_SHARED, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            raise FileMappingUnavailable(f"mmap failed: {os.strerror(ctypes.get_errno())}")
        self._libc = libc
        self.address: int = address
        self.nbytes = nbytes

    def close(self) -> None:
        if self.address:
            self._libc.munmap(self.address, self.nbytes)
            self.address = 0


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
        self._digest_stream = cp.cuda.Stream(non_blocking=True)
        self._digester: GpuChunkDigest | None = None
        self._digest_unavailable: str | None = None
        self._digests: list[tuple[Any, int]] = []  # (device output, chunk count), in start order
        self._blocks: dict[int, Any] = {}
        self._next_block = 1
        self._pinned: list[Any] = []
        self._views: list[memoryview] = []
        self._events: dict[int, Any] = {}
        self._file_map: _FileMap | None = None
        self._registered: dict[int, int] = {}  # slot -> page-locked window address, until its copy lands

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
        self._digest_stream.synchronize()  # ... or under a digest kernel
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
        window = self._registered.pop(buffer, None)
        if window is not None:
            self._cp.cuda.runtime.hostUnregister(window)

    def open_file_map(self, fd: int, nbytes: int) -> None:
        self.close_file_map()
        self._file_map = _FileMap(fd, nbytes)

    def copy_file_to_device(self, block: int, offset: int, file_offset: int, nbytes: int, slot: int) -> None:
        if self._file_map is None:
            raise FileMappingUnavailable("no file is mapped")
        self.wait_buffer(slot)
        window = self._file_map.address + file_offset
        try:
            self._cp.cuda.runtime.hostRegister(window, nbytes, HOST_REGISTER_READ_ONLY)
        except self._cp.cuda.runtime.CUDARuntimeError as exc:
            raise FileMappingUnavailable(f"cudaHostRegister of the file failed: {exc}") from None
        self._registered[slot] = window
        self._copy(
            self._blocks[block].ptr + offset, window, nbytes, self._cp.cuda.runtime.memcpyHostToDevice, slot
        )

    def close_file_map(self) -> None:
        if self._file_map is None and not self._registered:
            return
        try:
            self._stream.synchronize()
        finally:
            for slot in list(self._registered):
                self._events.pop(slot, None)
                try:
                    self._cp.cuda.runtime.hostUnregister(self._registered.pop(slot))
                except Exception as exc:
                    logger.warning("releasing a page-locked file window failed: %s", exc)
            if self._file_map is not None:
                self._file_map.close()
                self._file_map = None

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

    def can_digest(self) -> bool:
        """Compiles the SHA-256 kernel on first use (NVRTC); False, once and for all, if that fails."""
        if self._digester is None and self._digest_unavailable is None:
            try:
                self._digester = GpuChunkDigest(self._cp)
            except Exception as exc:
                self._digest_unavailable = str(exc)
                logger.warning("GPU digest unavailable, hashing on the CPU instead: %s", exc)
        return self._digester is not None

    def start_digest(self, block: int, nbytes: int, chunk_size_bytes: int) -> None:
        assert self._digester is not None
        copied = self._cp.cuda.Event(block=False, disable_timing=True)
        copied.record(self._stream)
        self._digest_stream.wait_event(copied)  # hash only after the copies issued so far have landed
        out = self._digester.launch(self._blocks[block].ptr, nbytes, chunk_size_bytes, self._digest_stream)
        self._digests.append(out)

    def collect_digests(self) -> list[str]:
        pending, self._digests = self._digests, []
        if not pending:
            return []
        self._digest_stream.synchronize()
        assert self._digester is not None
        return [digest for out, chunks in pending for digest in self._digester.read(out, chunks)]

    def close(self) -> None:
        try:
            self._digest_stream.synchronize()
            self._stream.synchronize()
        finally:
            self.close_file_map()
            self.close_staging()
            self._blocks.clear()
            self._cp.get_default_memory_pool().free_all_blocks()


@dataclass(frozen=True)
class CudaDeviceFactory:
    """Picklable: the spawned host calls it to open GPU `gpu` (importing CuPy there, never in the app)."""

    gpu: int

    def __call__(self) -> CudaDevice:
        return CudaDevice(self.gpu)


_SHA256_KERNEL = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
__constant__ u32 K[64] = {
  0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
  0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
  0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
  0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
  0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
  0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
  0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
  0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
__device__ __forceinline__ u32 rotr(u32 x, int n) { return __funnelshift_r(x, x, n); }
__device__ __forceinline__ void compress(u32* h, u32* w) {
  #pragma unroll
  for (int t = 16; t < 64; t++) {
    u32 s0 = rotr(w[t-15], 7) ^ rotr(w[t-15], 18) ^ (w[t-15] >> 3);
    u32 s1 = rotr(w[t-2], 17) ^ rotr(w[t-2], 19) ^ (w[t-2] >> 10);
    w[t] = w[t-16] + s0 + w[t-7] + s1;
  }
  u32 a=h[0],b=h[1],c=h[2],d=h[3],e=h[4],f=h[5],g=h[6],hh=h[7];
  #pragma unroll
  for (int t = 0; t < 64; t++) {
    u32 t1 = hh + (rotr(e,6) ^ rotr(e,11) ^ rotr(e,25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
    u32 t2 = (rotr(a,2) ^ rotr(a,13) ^ rotr(a,22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh=g; g=f; f=e; e=d+t1; d=c; c=b; b=a; a=t1+t2;
  }
  h[0]+=a; h[1]+=b; h[2]+=c; h[3]+=d; h[4]+=e; h[5]+=f; h[6]+=g; h[7]+=hh;
}
extern "C" __global__ void sha256_chunks(const unsigned char* data, u64 total, u64 chunk, u64 nchunks,
                                         u32* out) {
  u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= nchunks) return;
  const unsigned char* p = data + i * chunk;
  u64 len = total - i * chunk; if (len > chunk) len = chunk;
  u32 h[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
  u32 w[64];
  u64 full = len / 64;
  const uint4* q = (const uint4*)p;  // chunk starts are 64-byte aligned (cudaMalloc base, chunk % 64 == 0)
  for (u64 b = 0; b < full; b++) {
    #pragma unroll
    for (int k = 0; k < 4; k++) {
      uint4 v = q[b * 4 + k];
      w[k*4+0] = __byte_perm(v.x, 0, 0x0123); w[k*4+1] = __byte_perm(v.y, 0, 0x0123);
      w[k*4+2] = __byte_perm(v.z, 0, 0x0123); w[k*4+3] = __byte_perm(v.w, 0, 0x0123);
    }
    compress(h, w);
  }
  unsigned char tail[128];
  u64 rem = len - full * 64;
  for (u64 k = 0; k < 128; k++) tail[k] = 0;
  for (u64 k = 0; k < rem; k++) tail[k] = p[full * 64 + k];
  tail[rem] = 0x80;
  int blocks = rem < 56 ? 1 : 2;
  u64 bits = len * 8;
  for (int k = 0; k < 8; k++) tail[blocks * 64 - 1 - k] = (unsigned char)(bits >> (8 * k));
  for (int bl = 0; bl < blocks; bl++) {
    for (int k = 0; k < 16; k++) {
      const unsigned char* s = tail + bl * 64 + k * 4;
      w[k] = ((u32)s[0] << 24) | ((u32)s[1] << 16) | ((u32)s[2] << 8) | (u32)s[3];
    }
    compress(h, w);
  }
  for (int k = 0; k < 8; k++) out[i * 8 + k] = h[k];
}
"""


class GpuChunkDigest:
    """SHA-256 of each chunk of a device buffer, one GPU thread per chunk (NVRTC-compiled on first use).

    Gives the same digests as hashlib over the same bytes; raises if CuPy cannot compile it (no NVRTC), and
    the caller then falls back to hashing on the CPU."""

    def __init__(self, cp: Any) -> None:
        self._cp = cp
        self._kernel = cp.RawKernel(_SHA256_KERNEL, "sha256_chunks")
        self._kernel.compile()

    def launch(self, ptr: int, nbytes: int, chunk_size_bytes: int, stream: Any) -> tuple[Any, int]:
        """Start hashing [ptr, ptr+nbytes) in chunks of chunk_size_bytes (a multiple of 64) on `stream`;
        returns (device output, chunk count) for read()."""
        import numpy

        cp = self._cp
        if chunk_size_bytes <= 0 or chunk_size_bytes % 64:
            raise ValueError(f"chunk_size_bytes must be a positive multiple of 64, got {chunk_size_bytes}")
        chunks = -(-nbytes // chunk_size_bytes)
        out = cp.cuda.Memory(max(1, chunks) * 32)
        if chunks:
            threads = 64
            args = (
                numpy.uint64(ptr),
                numpy.uint64(nbytes),
                numpy.uint64(chunk_size_bytes),
                numpy.uint64(chunks),
                numpy.uint64(out.ptr),
            )
            self._kernel((-(-chunks // threads),), (threads,), args, stream=stream)
        return out, chunks

    def read(self, out: Any, chunks: int) -> list[str]:
        """The hex digests from a finished launch()."""
        import numpy

        host = numpy.empty(chunks * 8, dtype=numpy.uint32)
        if chunks:
            self._cp.cuda.runtime.memcpy(
                host.ctypes.data, out.ptr, chunks * 32, self._cp.cuda.runtime.memcpyDeviceToHost
            )
        raw = host.astype(">u4").tobytes()  # the state words, big-endian: SHA-256's byte order
        return [raw[i * 32 : (i + 1) * 32].hex() for i in range(chunks)]

    def digest(self, ptr: int, nbytes: int, chunk_size_bytes: int) -> list[str]:
        """Synchronous: launch on the current stream, wait, read."""
        stream = self._cp.cuda.get_current_stream()
        out, chunks = self.launch(ptr, nbytes, chunk_size_bytes, stream)
        stream.synchronize()
        return self.read(out, chunks)
