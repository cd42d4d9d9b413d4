"""The residency host: the serve loop that owns one GPU's device memory, and the two ways to start it.

`serve(conn, device_factory)` is device-agnostic. With CUDA it runs in a child process started with the spawn
method (works in a frozen bundle; the CUDA context lives and dies with that process, so when the host ends
NVML lists no process of ours). In simulation the same loop runs in a thread over the same kind of Pipe, so
tests exercise the real protocol.

Inside the host, one job thread does the device work (seal, verify, tamper) in order; the main loop keeps
reading the pipe so that a FreeRequest can cancel a seal in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Protocol

from app.core.errors import InvalidInput
from app.core.residency.host import protocol as p
from app.core.residency.seal import (
    Device,
    ResidentModel,
    SealCancelled,
    SealOptions,
    seal_file,
    verify_resident,
)
from app.core.units import MiB

logger = logging.getLogger(__name__)

DeviceFactory = Callable[[], Device]
PROGRESS_INTERVAL_S = 0.02  # at most ~50 progress messages a second, plus the last one
THREAD_HOST_PID_BASE = (
    4_100_000  # synthetic pids of thread hosts: above Linux's pid_max, never a real process
)


@dataclass
class _Job:
    request: p.SealRequest | p.VerifyRequest | p.TamperRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


_STOP = object()


class _Host:
    def __init__(self, conn: Connection, device: Device, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.device = device
        self.clock = clock
        self.send_lock = threading.Lock()
        self.models: dict[str, ResidentModel] = {}
        self.busy: dict[str, _Job] = {}
        self.jobs: queue.Queue[object] = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="residency-host-job", daemon=True)
        self.verify_options = SealOptions()  # the last seal's I/O settings (the chunk size is the manifest's)

    def send(self, message: p.Reply) -> None:
        with self.send_lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError, ValueError) as exc:  # the manager is gone; the main loop will see EOF
                logger.debug("could not send %s: %s", type(message).__name__, exc)

    # --- main loop -------------------------------------------------------------------------------

    def run(self) -> int:
        self.worker.start()
        while True:
            try:
                request = self.conn.recv()
            except (EOFError, OSError):
                logger.info("residency host: the manager closed the pipe; freeing everything")
                self._stop()
                return 0
            if isinstance(request, p.ShutdownRequest):
                self._stop()
                self.send(p.Bye())
                return 0
            try:
                self._dispatch(request)
            except Exception as exc:
                model = getattr(request, "model", "")
                logger.exception("residency host: %s failed", type(request).__name__)
                self.send(p.failed(model, request, exc))

    def _dispatch(self, request: object) -> None:
        if isinstance(request, p.FreeRequest):
            self._free(request.model)
        elif isinstance(request, p.SealRequest):
            if request.model in self.models or request.model in self.busy:
                raise InvalidInput(f"{request.model} is already loaded or loading in this host")
            self._enqueue(_Job(request))
        elif isinstance(request, p.VerifyRequest | p.TamperRequest):
            if request.model not in self.models:
                raise InvalidInput(f"{request.model} is not resident in this host", field_name="model")
            self._enqueue(_Job(request))
        else:
            raise InvalidInput(f"unknown request {type(request).__name__}")

    def _enqueue(self, job: _Job) -> None:
        self.busy[job.request.model] = job
        self.jobs.put(job)

    def _free(self, model: str) -> None:
        job = self.busy.get(model)
        if job is not None:
            job.cancel.set()
            job.done.wait()
        resident = self.models.pop(model, None)
        nbytes = 0
        if resident is not None:
            nbytes = resident.total_bytes
            resident.free(self.device)
        self.send(p.Freed(model, nbytes))

    def _stop(self) -> None:
        for job in list(self.busy.values()):
            job.cancel.set()
        self.jobs.put(_STOP)
        self.worker.join()
        for resident in self.models.values():
            resident.free(self.device)
        self.models.clear()
        try:
            self.device.close()
        except Exception:
            logger.exception("residency host: closing the device failed")

    # --- the job thread --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if not isinstance(job, _Job):
                return
            try:
                self._run_job(job)
            except Exception as exc:
                logger.info(
                    "residency host: %s of %s failed: %s", type(job.request).__name__, job.request.model, exc
                )
                self.send(p.failed(job.request.model, job.request, exc))
            finally:
                self.busy.pop(job.request.model, None)
                job.done.set()

    def _run_job(self, job: _Job) -> None:
        request = job.request
        if job.cancel.is_set():
            raise SealCancelled(f"{request.model}: cancelled", details={"model": request.model})
        if isinstance(request, p.SealRequest):
            self._seal(request, job.cancel)
        elif isinstance(request, p.VerifyRequest):
            started = self.clock()
            digests = verify_resident(self.device, self.models[request.model], self.verify_options)
            self.send(p.Verified(request.model, tuple(digests), self.clock() - started))
        else:
            resident = self.models[request.model]
            if not 0 <= request.offset < resident.total_bytes:
                raise InvalidInput(f"offset {request.offset} is outside {request.model}", field_name="offset")
            block, inner = resident.locate(request.offset)
            value = self.device.read_byte(block, inner) ^ (request.xor_mask & 0xFF)
            self.device.write_byte(block, inner, value)
            self.send(p.Tampered(request.model, request.offset))

    def _seal(self, request: p.SealRequest, cancel: threading.Event) -> None:
        last_sent = [float("-inf")]

        def progress(done: int, total: int) -> None:
            now = self.clock()
            if done == total or now - last_sent[0] >= PROGRESS_INTERVAL_S:
                last_sent[0] = now
                self.send(p.Progress(request.model, done, total))

        options = SealOptions(
            chunk_size_bytes=request.chunk_size_bytes,
            segment_bytes=request.segment_bytes,
            staging_bytes=request.staging_bytes,
            staging_buffers=request.staging_buffers,
            reader_threads=request.reader_threads,
            hash_threads=request.hash_threads,
            device_digest=request.device_digest,
            map_files=request.map_files,
        )
        self.verify_options = options
        resident, seconds = seal_file(
            self.device,
            model=request.model,
            path=request.path,
            options=options,
            progress=progress,
            cancel=cancel,
            clock=self.clock,
        )
        if cancel.is_set():  # freed while the last chunk was landing
            resident.free(self.device)
            raise SealCancelled(f"sealing {request.model} was cancelled", details={"model": request.model})
        assert resident.manifest is not None
        self.models[request.model] = resident
        self.send(p.Sealed(request.model, resident.manifest, seconds))


def serve(
    conn: Connection, device_factory: DeviceFactory, *, clock: Callable[[], float] = time.monotonic
) -> int:
    """Run the host until ShutdownRequest or the pipe closes; returns the exit code."""
    try:
        device = device_factory()
    except Exception as exc:
        logger.error("residency host: cannot open the device: %s", exc)
        with contextlib.suppress(OSError, ValueError):
            conn.send(p.failed("", "startup", exc))
        return 1
    try:
        conn.send(p.Ready(pid=getattr(device, "pid", None) or os.getpid(), gpu=device.gpu))
    except (OSError, ValueError):
        device.close()
        return 0
    return _Host(conn, device, clock).run()


# --- starting hosts ------------------------------------------------------------------------------


class HostHandle(Protocol):
    """A running host as the manager sees it."""

    gpu: int
    pid: int
    conn: Connection  # the manager's end of the pipe

    def is_alive(self) -> bool: ...

    def exit_code(self) -> int | None: ...

    def join(self, timeout_s: float) -> bool:
        """Wait for the host to end; True if it has."""
        ...

    def kill(self) -> None:
        """End it at once (SIGKILL for a process)."""
        ...


class HostLauncher(Protocol):
    context_overhead_bytes: int  # VRAM a new host costs before any model (the CUDA context)

    def launch(self, gpu: int) -> HostHandle: ...


def _process_main(conn: Connection, device_factory: DeviceFactory) -> None:
    logging.basicConfig(level=logging.WARNING, format="residency-host %(levelname)s %(name)s: %(message)s")
    code = serve(conn, device_factory)
    conn.close()
    os._exit(code)  # skip interpreter teardown: nothing of ours is left to flush, and it is faster


class ProcessHost:
    def __init__(self, gpu: int, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.gpu = gpu
        self._process = process
        self.conn = conn
        assert process.pid is not None
        self.pid: int = process.pid

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def exit_code(self) -> int | None:
        return self._process.exitcode

    def join(self, timeout_s: float) -> bool:
        self._process.join(timeout_s)
        return not self._process.is_alive()

    def kill(self) -> None:
        self._process.kill()
        self._process.join(5.0)


class ProcessHostLauncher:
    """Starts each host in a spawned child process. `device_factory(gpu)` must return a picklable factory
    (CudaDeviceFactory by default)."""

    def __init__(
        self,
        device_factory: Callable[[int], DeviceFactory] | None = None,
        *,
        context_overhead_bytes: int = 600 * MiB,
    ) -> None:
        if device_factory is None:
            from app.core.residency.host.cuda_device import CudaDeviceFactory

            device_factory = CudaDeviceFactory
        self._device_factory = device_factory
        self.context_overhead_bytes = context_overhead_bytes

    def launch(self, gpu: int) -> HostHandle:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_process_main,
            args=(theirs, self._device_factory(gpu)),
            name=f"vram-steward-host-gpu{gpu}",
            daemon=True,
        )
        process.start()
        theirs.close()
        logger.info("started residency host pid %s for GPU %d", process.pid, gpu)
        return ProcessHost(gpu, process, ours)


_thread_pids = itertools.count(THREAD_HOST_PID_BASE)


class ThreadHost:
    def __init__(self, gpu: int, pid: int, conn: Connection, thread: threading.Thread, host_end: Connection):
        self.gpu = gpu
        self.pid = pid
        self.conn = conn
        self._thread = thread
        self._host_end = host_end
        self.killed = False

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self.killed

    def exit_code(self) -> int | None:
        if self.killed:
            return -9
        return None if self._thread.is_alive() else 0

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def kill(self) -> None:
        """Like kill -9 from the manager's view: the pipe breaks at once and the memory goes back (here the
        host thread frees it as it ends, as the driver would for a dead process)."""
        self.killed = True
        _break_pipe(self._host_end)
        self._thread.join(5.0)


def _break_pipe(conn: Connection) -> None:
    """Shut the socket under `conn` down, waking a reader blocked on either end with EOF."""
    try:
        dup = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, ValueError):
        conn.close()
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


class ThreadHostLauncher:
    """Runs each host's serve loop in a thread of this process, over a real Pipe (simulation and tests).
    `device_factory(gpu, pid)` builds the device; the pid is synthetic (THREAD_HOST_PID_BASE and up)."""

    def __init__(
        self,
        device_factory: Callable[[int, int], Device],
        *,
        context_overhead_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._device_factory = device_factory
        self.context_overhead_bytes = context_overhead_bytes
        self._clock = clock

    def launch(self, gpu: int) -> HostHandle:
        ours, theirs = multiprocessing.Pipe(duplex=True)
        pid = next(_thread_pids)

        def run() -> None:
            try:
                serve(theirs, lambda: self._device_factory(gpu, pid), clock=self._clock)
            finally:
                theirs.close()

        thread = threading.Thread(target=run, name=f"residency-host-gpu{gpu}", daemon=True)
        thread.start()
        return ThreadHost(gpu, pid, ours, thread, theirs)
