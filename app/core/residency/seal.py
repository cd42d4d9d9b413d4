"""Sealing: stream a model file into device memory and digest it on the way; verifying: rehash what is in
device memory. Runs inside the residency host, against any `Device` (CUDA, or the simulator's host memory).

The stream: several staging buffers in flight; reader threads fill them from the file (os.preadv, no extra
copy), and an asynchronous host-to-device copy moves each filled buffer to the GPU. The digest is SHA-256
per chunk (a fixed size that divides the staging size): on the GPU when the device can (a kernel hashes each
segment in VRAM once its copies are done: no CPU time, and it hashes what is really resident), otherwise on
the CPU in the ChunkHasher's threads, from the staging buffer. A staging buffer is refilled only after its
copy (and its CPU hash, if any) is done.

With `map_files` (off by default, see `_map_in` for why) and a device that hashes and can map files (CUDA on
Linux), the seal skips staging altogether: the file is mapped read-only and each segment's window of the page
cache is page-locked in place (cudaHostRegister) and copied by DMA, one window registering while the previous
one copies. A device or file that cannot be mapped falls back to the staging stream.

Device memory is taken in segments (a multiple of the staging size) as the stream reaches them, so memory
that another application grabs in the middle of a seal ends in a clean, retriable CudaAllocationFailed with
everything released, rather than in that application's crash.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from app.core.errors import CudaAllocationFailed, ModelFileError, VramError
from app.core.residency.digest import (
    DEFAULT_CHUNK_SIZE_BYTES,
    ChunkHasher,
    Manifest,
    chunk_count,
    chunk_digest,
    default_hash_threads,
)
from app.core.units import GiB, MiB

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (done_bytes, total_bytes)


class DeviceOutOfMemory(Exception):
    """A device allocation failed for lack of memory (cudaErrorMemoryAllocation, SimulatedOutOfMemory)."""


class FileMappingUnavailable(Exception):
    """This device or this file cannot be copied from a mapping (no mmap, no read-only page-locking): the
    seal streams through staging buffers instead."""


class SealCancelled(VramError):
    """The seal was cancelled (evicted while loading); everything allocated for it was freed."""

    code = "seal_cancelled"
    retriable = True


class Device(Protocol):
    """The memory of one GPU, as the host sees it. Blocks and staging buffers are named by small ints."""

    gpu: int

    def allocate(self, nbytes: int) -> int:
        """A dedicated block of device memory (never a pool); raises DeviceOutOfMemory."""
        ...

    def free(self, block: int) -> None: ...

    def open_staging(self, count: int, nbytes: int) -> list[memoryview]:
        """`count` writable host buffers of `nbytes` each (pinned on CUDA), for copies in either direction."""
        ...

    def close_staging(self) -> None: ...

    def copy_to_device(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
        """Start copying staging buffer `buffer`[:nbytes] to `block` at `offset` (may return before done)."""
        ...

    def copy_to_host(self, block: int, offset: int, buffer: int, nbytes: int) -> None:
        """Start copying `block`[offset:offset+nbytes] into staging buffer `buffer`."""
        ...

    def wait_buffer(self, buffer: int) -> None:
        """Block until every copy issued on staging buffer `buffer` has finished."""
        ...

    def write_byte(self, block: int, offset: int, value: int) -> None:
        """Overwrite one byte in device memory (tests only: simulates corruption)."""
        ...

    def read_byte(self, block: int, offset: int) -> int: ...

    def open_file_map(self, fd: int, nbytes: int) -> None:
        """Map the first `nbytes` of the open file read-only, for copy_file_to_device; raises
        FileMappingUnavailable when it cannot."""
        ...

    def copy_file_to_device(self, block: int, offset: int, file_offset: int, nbytes: int, slot: int) -> None:
        """Copy [file_offset, file_offset+nbytes) of the mapped file into the block, asynchronously, with no
        staging copy. It first waits for the slot's previous copy (and releases that window); so does
        `wait_buffer(slot)`. Raises FileMappingUnavailable when the window cannot be page-locked."""
        ...

    def close_file_map(self) -> None:
        """Wait for the copies, release every window and unmap. Safe to call when nothing is mapped."""
        ...

    def can_digest(self) -> bool:
        """Whether this device hashes chunks itself (a GPU kernel); if not, the CPU does."""
        ...

    def start_digest(self, block: int, nbytes: int, chunk_size_bytes: int) -> None:
        """Queue the chunk digests of `block`[:nbytes], after every copy issued so far."""
        ...

    def collect_digests(self) -> list[str]:
        """The hex digests of every chunk queued by start_digest, in order; clears the queue."""
        ...

    def close(self) -> None:
        """Free everything (blocks, staging) and release the device."""
        ...


def default_reader_threads() -> int:
    """Reads from the page cache into pinned memory run at ~2-5 GB/s per thread (H200 box: 4 threads 14 GB/s,
    8 threads 17.5 GB/s sealed, the same CPU seconds in all): half the cores, 2 to 8."""
    return max(2, min(8, (os.cpu_count() or 4) // 2))


@dataclass(frozen=True)
class SealOptions:
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES  # the digest's unit (what verify can name)
    staging_bytes: int = 64 * MiB  # one read / one copy; rounded to whole chunks
    segment_bytes: int = 1 * GiB  # device memory is taken in blocks of this size (rounded to whole stagings)
    staging_buffers: int = 0  # 0: reader_threads + 2, plus hash_threads when the CPU hashes
    reader_threads: int = 0  # 0: default_reader_threads()
    hash_threads: int = 0  # 0: default_hash_threads() (used only when the device cannot hash)
    device_digest: bool = True  # hash on the device when it can
    map_files: bool = False  # with device digests: copy from a page-locked mapping of the file (see _map_in)

    def resolved(self, *, cpu_hashing: bool = True) -> SealOptions:
        if self.chunk_size_bytes <= 0 or self.chunk_size_bytes % 64:
            raise ValueError(
                f"chunk_size_bytes must be a positive multiple of 64, got {self.chunk_size_bytes}"
            )
        chunk = self.chunk_size_bytes
        staging = max(chunk, self.staging_bytes // chunk * chunk)
        hashers = self.hash_threads or default_hash_threads()
        readers = self.reader_threads or default_reader_threads()
        buffers = self.staging_buffers or readers + 2 + (hashers if cpu_hashing else 0)
        return SealOptions(
            chunk_size_bytes=chunk,
            staging_bytes=staging,
            segment_bytes=max(staging, self.segment_bytes // staging * staging),
            staging_buffers=max(2, buffers),
            reader_threads=readers,
            hash_threads=hashers,
            device_digest=self.device_digest,
            map_files=self.map_files,
        )


@dataclass
class ResidentModel:
    """A model in device memory: its segments (block ids, in order) and what it must hash to."""

    name: str
    path: str
    total_bytes: int
    segment_bytes: int
    blocks: list[int] = field(default_factory=list)
    manifest: Manifest | None = None

    def locate(self, offset: int) -> tuple[int, int]:
        """(block, offset inside it) of a model byte offset."""
        return self.blocks[offset // self.segment_bytes], offset % self.segment_bytes

    def free(self, device: Device) -> None:
        while self.blocks:
            device.free(self.blocks.pop())


def open_model_file(path: str) -> tuple[int, int]:
    """(fd, size) of a regular, non-empty, readable model file, or ModelFileError. Allocates nothing."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ModelFileError(path=path, problem="is a directory, expected a model file")
        if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block until a writer comes
            raise ModelFileError(path=path, problem="is not a regular file (a pipe or a device?)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelFileError(path=path, problem="no such file") from None
    except PermissionError:
        raise ModelFileError(
            path=path, problem="permission denied", suggestion="Make the file readable by this user"
        ) from None
    except IsADirectoryError:
        raise ModelFileError(path=path, problem="is a directory, expected a model file") from None
    except OSError as exc:
        raise ModelFileError(path=path, problem=f"cannot be opened ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ModelFileError(path=path, problem="is a directory, expected a model file")
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(path=path, problem="is not a regular file (a pipe or a device?)")
        if info.st_size == 0:
            raise ModelFileError(path=path, problem="is empty (0 bytes)")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _read_fully(fd: int, view: memoryview, offset: int) -> int:
    """Read into `view` from `offset` until it is full or the file ends; returns the bytes read."""
    done = 0
    total = len(view)
    while done < total:
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(fd, total - done, offset + done)
            n = len(data)
            view[done : done + n] = data
        if n == 0:
            break
        done += n
    return done


def _hash_pieces(view: memoryview, chunk_size_bytes: int) -> list[str]:
    """CPU digests of the chunks in one staging buffer."""
    return [chunk_digest(view[i : i + chunk_size_bytes]) for i in range(0, len(view), chunk_size_bytes)]


class _Stream:
    """Bookkeeping for one pass over a model: which staging buffer holds which piece, and what is pending.
    A "piece" is one staging buffer's worth of the model (staging_bytes, the last one shorter)."""

    def __init__(self, device: Device, options: SealOptions, *, on_device: bool, total_bytes: int) -> None:
        self.device = device
        self.options = options
        self.on_device = on_device
        chunk = options.chunk_size_bytes
        size = min(options.staging_bytes, chunk_count(total_bytes, chunk) * chunk)  # a small model: less
        count = min(options.staging_buffers, max(2, chunk_count(total_bytes, size)))
        self.buffers = device.open_staging(count, size)
        self.hasher = None if on_device else ChunkHasher(options.hash_threads)
        self.hashes: dict[int, Future[list[str]]] = {}
        self.copies_pending: set[int] = set()

    def buffer_of(self, piece: int) -> int:
        return piece % len(self.buffers)

    def hash_on_cpu(self, piece: int, view: memoryview) -> None:
        assert self.hasher is not None
        self.hashes[piece] = self.hasher.submit_call(_hash_pieces, view, self.options.chunk_size_bytes)

    def make_free(self, buffer: int, previous_piece: int) -> None:
        """Wait until `buffer` may be overwritten: its last piece's copy (and CPU hash) are done."""
        future = self.hashes.get(previous_piece)
        if future is not None:
            future.result()
        if buffer in self.copies_pending:
            self.device.wait_buffer(buffer)
            self.copies_pending.discard(buffer)

    def cpu_digests(self, pieces: int) -> list[str]:
        return [digest for piece in range(pieces) for digest in self.hashes[piece].result()]

    def drain(self) -> None:
        """Wait for everything in flight (also after an error, before any buffer or block is released)."""
        for future in self.hashes.values():
            if not future.done():
                future.exception()
        for buffer in list(self.copies_pending):
            try:
                self.device.wait_buffer(buffer)
            except Exception as exc:  # the error that brought us here matters more
                logger.warning("waiting for a copy on staging buffer %d failed: %s", buffer, exc)
        self.copies_pending.clear()
        if self.on_device:
            try:
                self.device.collect_digests()  # the digest kernels read the blocks: let them finish
            except Exception as exc:
                logger.warning("waiting for the device digests failed: %s", exc)

    def close(self) -> None:
        self.drain()
        if self.hasher is not None:
            self.hasher.close()
        for view in self.buffers:  # drop our views first, so the device can really free its pinned memory
            view.release()
        self.buffers = []
        self.device.close_staging()


def _use_device_digest(device: Device, options: SealOptions) -> bool:
    if not options.device_digest:
        return False
    try:
        return device.can_digest()
    except Exception as exc:
        logger.warning("the device cannot hash (%s); hashing on the CPU", exc)
        return False


def seal_file(
    device: Device,
    *,
    model: str,
    path: str,
    options: SealOptions = SealOptions(),
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[ResidentModel, float]:
    """Stream `path` into device memory and digest it; returns the resident model and the seconds it took.

    Raises ModelFileError (missing, unreadable, empty, changed while read), CudaAllocationFailed (out of
    memory part-way) or SealCancelled; in every case nothing stays allocated.
    """
    started = clock()
    fd, total = open_model_file(path)
    stream: _Stream | None = None
    resident: ResidentModel | None = None
    try:
        on_device = _use_device_digest(device, options)
        options = options.resolved(cpu_hashing=not on_device)
        resident = ResidentModel(model, path, total, options.segment_bytes)
        digests = None
        if on_device and options.map_files:
            try:
                digests = _map_in(device, fd, resident, options, progress, cancel)
            except FileMappingUnavailable as exc:
                logger.info("%s: not copied from a mapping (%s); streaming through staging", path, exc)
                resident.free(device)
        if digests is None:
            stream = _Stream(device, options, on_device=on_device, total_bytes=total)
            digests = _stream_in(stream, fd, resident, progress, cancel)
        after = os.fstat(fd).st_size
        if after != total:
            raise ModelFileError(
                path=path,
                problem=f"changed size while it was read ({total} bytes before, {after} after)",
                suggestion="Wait until the file is completely written, then load it again",
            )
        resident.manifest = Manifest.from_chunk_digests(options.chunk_size_bytes, total, digests)
    except BaseException:
        if stream is not None:
            stream.drain()
        if resident is not None:
            resident.free(device)
        raise
    finally:
        os.close(fd)
        if stream is not None:
            stream.close()
    return resident, clock() - started


def _stream_in(
    stream: _Stream,
    fd: int,
    resident: ResidentModel,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> list[str]:
    options = stream.options
    piece_bytes = options.staging_bytes
    total = resident.total_bytes
    pieces = chunk_count(total, piece_bytes)
    buffers = len(stream.buffers)
    reads: deque[Future[int]] = deque()
    submitted = 0
    done_bytes = 0
    with ThreadPoolExecutor(max_workers=options.reader_threads, thread_name_prefix="model-read") as readers:
        try:
            for index in range(pieces):
                while submitted < pieces and submitted - index < buffers:
                    buffer = stream.buffer_of(submitted)
                    stream.make_free(buffer, submitted - buffers)
                    size = min(piece_bytes, total - submitted * piece_bytes)
                    view = stream.buffers[buffer][:size]
                    reads.append(readers.submit(_read_fully, fd, view, submitted * piece_bytes))
                    submitted += 1
                if cancel is not None and cancel.is_set():
                    raise SealCancelled(f"{resident.name}: cancelled", details={"model": resident.name})
                offset = index * piece_bytes
                size = min(piece_bytes, total - offset)
                got = reads.popleft().result()
                if got != size:
                    raise ModelFileError(
                        path=resident.path,
                        problem=(
                            f"ended early: expected {total} bytes, the read at offset {offset} "
                            f"got {got} of {size} (was it truncated while loading?)"
                        ),
                        suggestion="Wait until the file is completely written, then load it again",
                    )
                if offset % options.segment_bytes == 0:
                    _allocate_segment(stream.device, resident, min(options.segment_bytes, total - offset))
                buffer = stream.buffer_of(index)
                if not stream.on_device:
                    stream.hash_on_cpu(index, stream.buffers[buffer][:size])
                block, inner = resident.locate(offset)
                stream.device.copy_to_device(block, inner, buffer, size)
                stream.copies_pending.add(buffer)
                end = offset + size
                if stream.on_device and (end % options.segment_bytes == 0 or end == total):
                    stream.device.start_digest(block, inner + size, options.chunk_size_bytes)
                done_bytes += size
                if progress is not None:
                    progress(done_bytes, total)
        finally:
            for pending in reads:  # readers write into staging buffers: let them finish first
                pending.cancel()
                if not pending.cancelled():
                    pending.exception()
    if stream.on_device:
        return stream.device.collect_digests()
    stream.drain()
    return stream.cpu_digests(pieces)


def _map_in(
    device: Device,
    fd: int,
    resident: ResidentModel,
    options: SealOptions,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> list[str]:
    """The zero-copy seal: one window per segment, copied straight from the page cache (see the module
    docstring); the device hashes each segment once its copy has landed. Two windows in flight at most.

    Off by default (SealOptions.map_files): on an H200 it sealed at 12 GB/s with half the CPU time of the
    staging stream's 15-16 GB/s. Releasing a window (cudaHostUnregister) waits for all of the device's work,
    digest kernels included, so the next window stalls; without digests the same loop ran at 19 GB/s.
    Hashing after the last copy did not help (11.9 GB/s): one segment's digest kernel has only one thread
    per 1 MiB chunk, so run back to back they take about as long (docs/BENCHMARKS.md)."""
    total = resident.total_bytes
    window = options.segment_bytes
    device.open_file_map(fd, total)
    try:
        for index, offset in enumerate(range(0, total, window)):
            if cancel is not None and cancel.is_set():
                raise SealCancelled(f"{resident.name}: cancelled", details={"model": resident.name})
            size = min(window, total - offset)
            _allocate_segment(device, resident, size)
            block, inner = resident.locate(offset)
            device.copy_file_to_device(block, inner, offset, size, index % 2)  # waits for the window 2 back
            device.start_digest(block, inner + size, options.chunk_size_bytes)
            if progress is not None:
                progress(offset + size, total)
        return device.collect_digests()
    except BaseException:
        try:  # the kernels reading the blocks finish before the blocks are freed, and leave no digest behind
            device.collect_digests()
        except Exception as exc:  # the error that brought us here matters more
            logger.warning("waiting for the device digests failed: %s", exc)
        raise
    finally:
        device.close_file_map()


def _allocate_segment(device: Device, resident: ResidentModel, nbytes: int) -> None:
    try:
        resident.blocks.append(device.allocate(nbytes))
    except DeviceOutOfMemory as exc:
        allocated = len(resident.blocks) * resident.segment_bytes
        raise CudaAllocationFailed(
            gpu=device.gpu,
            model=resident.name,
            requested_bytes=resident.total_bytes,
            cause=f"out of memory after {allocated} of {resident.total_bytes} bytes ({exc})",
        ) from None


def verify_resident(
    device: Device,
    resident: ResidentModel,
    options: SealOptions = SealOptions(),
) -> list[str]:
    """The digest of each chunk of the model as it is in device memory now (on the device when it can hash,
    else read back through staging buffers and hashed on the CPU)."""
    if resident.manifest is None:
        raise ValueError(f"{resident.name} has no manifest to verify against")
    chunk = resident.manifest.chunk_size_bytes
    total = resident.total_bytes
    on_device = _use_device_digest(device, options)
    if on_device:
        for i, block in enumerate(resident.blocks):
            device.start_digest(block, min(resident.segment_bytes, total - i * resident.segment_bytes), chunk)
        return device.collect_digests()
    staging = max(chunk, min(options.staging_bytes, resident.segment_bytes) // chunk * chunk)
    while resident.segment_bytes % staging:  # a piece must not straddle two segments
        staging -= chunk
    options = SealOptions(
        chunk_size_bytes=chunk,
        staging_bytes=staging,
        segment_bytes=resident.segment_bytes,
        staging_buffers=options.staging_buffers,
        reader_threads=options.reader_threads,
        hash_threads=options.hash_threads,
    ).resolved(cpu_hashing=True)
    pieces = chunk_count(total, staging)
    stream = _Stream(device, options, on_device=False, total_bytes=total)
    try:
        buffers = len(stream.buffers)
        issued = 0
        for index in range(pieces):
            while issued < pieces and issued - index < buffers:
                buffer = stream.buffer_of(issued)
                stream.make_free(buffer, issued - buffers)
                block, inner = resident.locate(issued * staging)
                device.copy_to_host(block, inner, buffer, min(staging, total - issued * staging))
                stream.copies_pending.add(buffer)
                issued += 1
            buffer = stream.buffer_of(index)
            device.wait_buffer(buffer)
            stream.copies_pending.discard(buffer)
            stream.hash_on_cpu(index, stream.buffers[buffer][: min(staging, total - index * staging)])
        return stream.cpu_digests(pieces)
    finally:
        stream.close()
