"""Sealing: stream a model file into device memory and digest it on the way; verifying: read it back and
rehash. Runs inside the residency host, against any `Device` (CUDA, or the simulator's host memory).

The stream: several staging buffers in flight; reader threads fill them from the file (os.preadv, no extra
copy), then each filled buffer is hashed in the ChunkHasher's pool while an asynchronous host-to-device copy
moves it to the GPU. A staging buffer is refilled only after both its hash and its copy are done.

Device memory is taken in segments (a multiple of the chunk size) as the stream reaches them, so memory that
another application grabs in the middle of a seal ends in a clean, retriable CudaAllocationFailed with
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
    default_hash_threads,
)
from app.core.units import GiB

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (done_bytes, total_bytes)


class DeviceOutOfMemory(Exception):
    """A device allocation failed for lack of memory (cudaErrorMemoryAllocation, SimulatedOutOfMemory)."""


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

    def close(self) -> None:
        """Free everything (blocks, staging) and release the device."""
        ...


@dataclass(frozen=True)
class SealOptions:
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES
    segment_bytes: int = 1 * GiB  # device memory is taken in blocks of this size (rounded to whole chunks)
    staging_buffers: int = 0  # 0: hash_threads + reader_threads + 2
    reader_threads: int = 2
    hash_threads: int = 0  # 0: default_hash_threads()

    def resolved(self) -> SealOptions:
        if self.chunk_size_bytes <= 0:
            raise ValueError(f"chunk_size_bytes must be positive, got {self.chunk_size_bytes}")
        hashers = self.hash_threads or default_hash_threads()
        readers = max(1, self.reader_threads)
        buffers = self.staging_buffers or hashers + readers + 2
        chunks_per_segment = max(1, self.segment_bytes // self.chunk_size_bytes)
        return SealOptions(
            chunk_size_bytes=self.chunk_size_bytes,
            segment_bytes=chunks_per_segment * self.chunk_size_bytes,
            staging_buffers=max(2, buffers),
            reader_threads=readers,
            hash_threads=hashers,
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


class _Stream:
    """Bookkeeping for one pass over a model: which staging buffer holds which chunk, and what is pending."""

    def __init__(self, device: Device, options: SealOptions) -> None:
        self.device = device
        self.options = options
        self.buffers = device.open_staging(options.staging_buffers, options.chunk_size_bytes)
        self.hasher = ChunkHasher(options.hash_threads)
        self.hashes: dict[int, Future[str]] = {}
        self.copies_pending: set[int] = set()

    def buffer_of(self, chunk: int) -> int:
        return chunk % len(self.buffers)

    def make_free(self, buffer: int, previous_chunk: int) -> None:
        """Wait until `buffer` may be overwritten: its last chunk's hash and copy are done."""
        future = self.hashes.get(previous_chunk)
        if future is not None:
            future.result()
        if buffer in self.copies_pending:
            self.device.wait_buffer(buffer)
            self.copies_pending.discard(buffer)

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

    def close(self) -> None:
        self.drain()
        self.hasher.close()
        for view in self.buffers:  # drop our views first, so the device can really free its pinned memory
            view.release()
        self.buffers = []
        self.device.close_staging()


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
    options = options.resolved()
    started = clock()
    fd, total = open_model_file(path)
    resident = ResidentModel(model, path, total, options.segment_bytes)
    stream: _Stream | None = None
    try:
        stream = _Stream(device, options)
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
    chunk = options.chunk_size_bytes
    total = resident.total_bytes
    chunks = chunk_count(total, chunk)
    buffers = len(stream.buffers)
    reads: deque[Future[int]] = deque()
    submitted = 0
    done_bytes = 0
    with ThreadPoolExecutor(max_workers=options.reader_threads, thread_name_prefix="model-read") as readers:
        try:
            for index in range(chunks):
                while submitted < chunks and submitted - index < buffers:
                    buffer = stream.buffer_of(submitted)
                    stream.make_free(buffer, submitted - buffers)
                    size = min(chunk, total - submitted * chunk)
                    view = stream.buffers[buffer][:size]
                    reads.append(readers.submit(_read_fully, fd, view, submitted * chunk))
                    submitted += 1
                if cancel is not None and cancel.is_set():
                    raise SealCancelled(f"{resident.name}: cancelled", details={"model": resident.name})
                size = min(chunk, total - index * chunk)
                got = reads.popleft().result()
                if got != size:
                    raise ModelFileError(
                        path=resident.path,
                        problem=(
                            f"ended early: expected {total} bytes, the read at offset {index * chunk} "
                            f"got {got} of {size} (was it truncated while loading?)"
                        ),
                        suggestion="Wait until the file is completely written, then load it again",
                    )
                offset = index * chunk
                if offset % options.segment_bytes == 0:
                    _allocate_segment(stream.device, resident, min(options.segment_bytes, total - offset))
                buffer = stream.buffer_of(index)
                stream.hashes[index] = stream.hasher.submit(stream.buffers[buffer][:size])
                block, inner = resident.locate(offset)
                stream.device.copy_to_device(block, inner, buffer, size)
                stream.copies_pending.add(buffer)
                done_bytes += size
                if progress is not None:
                    progress(done_bytes, total)
        finally:
            for pending in reads:  # readers write into staging buffers: let them finish first
                pending.cancel()
                if not pending.cancelled():
                    pending.exception()
    stream.drain()
    return [stream.hashes[i].result() for i in range(chunks)]


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
    """Read the model back from device memory chunk by chunk and return each chunk's digest."""
    if resident.manifest is None:
        raise ValueError(f"{resident.name} has no manifest to verify against")
    options = SealOptions(
        chunk_size_bytes=resident.manifest.chunk_size_bytes,
        segment_bytes=resident.segment_bytes,
        staging_buffers=options.staging_buffers,
        reader_threads=options.reader_threads,
        hash_threads=options.hash_threads,
    ).resolved()
    chunk = options.chunk_size_bytes
    total = resident.total_bytes
    chunks = chunk_count(total, chunk)
    stream = _Stream(device, options)
    try:
        buffers = len(stream.buffers)
        issued = 0
        for index in range(chunks):
            while issued < chunks and issued - index < buffers:
                buffer = stream.buffer_of(issued)
                stream.make_free(buffer, issued - buffers)
                block, inner = resident.locate(issued * chunk)
                size = min(chunk, total - issued * chunk)
                device.copy_to_host(block, inner, buffer, size)
                stream.copies_pending.add(buffer)
                issued += 1
            buffer = stream.buffer_of(index)
            device.wait_buffer(buffer)
            stream.copies_pending.discard(buffer)
            size = min(chunk, total - index * chunk)
            stream.hashes[index] = stream.hasher.submit(stream.buffers[buffer][:size])
        return [stream.hashes[i].result() for i in range(chunks)]
    finally:
        stream.close()
