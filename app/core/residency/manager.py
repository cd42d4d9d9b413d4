"""ResidencyManager: the built-in model holder ("builtin"). It admits loads through the ledger, drives one
residency host per GPU over a pipe, and turns what the hosts report into events.

Called from the engine's worker thread only (not thread-safe). `start_load` returns at once; `poll()` brings
progress, completed seals and dead hosts; `evict`/`unload` are synchronous: when they return, the memory is
freed, the host has ended if it held nothing else, and NVML (through `measure_backend`) has been asked whether
anything of ours is left on that GPU.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing.connection
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core import errors
from app.core import events as ev
from app.core.errors import InsufficientVram, InvalidInput, VramError
from app.core.events import AuditLog, Event
from app.core.holders import HolderRole, ModelState, ModelStatus
from app.core.residency.digest import Manifest, ManifestStore
from app.core.residency.host import protocol as p
from app.core.residency.host.process import HostHandle, HostLauncher
from app.core.residency.seal import SealOptions, open_model_file

if TYPE_CHECKING:
    from app.core.gpu.backend import GpuBackend
    from app.core.residency.ledger import Ledger
    from app.core.settings import ModelConfig, Settings

logger = logging.getLogger(__name__)

MeasureOurs = Callable[[int], int | None]  # gpu -> bytes NVML shows for our host pids there (None: unknown)


class _HostGone(Exception):
    pass


@dataclass
class _Model:
    config: ModelConfig
    state: ModelState = ModelState.UNLOADED
    size_bytes: int | None = None
    manifest: Manifest | None = None
    reservation_id: str | None = None
    load_started_at: float | None = None
    done_bytes: int | None = None
    last_error: str | None = None
    error: VramError | None = None
    load_seconds: float | None = None
    load_bytes_per_s: float | None = None
    last_used_at: float | None = None
    cancelling: bool = False

    @property
    def gpu(self) -> int:
        return self.config.gpu


@dataclass
class _Host:
    handle: HostHandle
    models: set[str] = field(default_factory=set)  # loading or resident here
    ready: bool = False


class ResidencyManager:
    """Implements the holder contract (app/core/holders.py) for models sealed into our own hosts.

    Freeing is bounded: a host that does not answer a free within `free_timeout_s` (hung, or stopped with
    SIGSTOP) is killed, which frees its VRAM just as well; a host that does not exit within `exit_grace_s`
    of being told to is killed too. So an eviction never waits on a host for more than a few seconds."""

    name = "builtin"
    role = HolderRole.SELF

    def __init__(
        self,
        settings: Settings,
        ledgers: Mapping[int, Ledger],
        launcher: HostLauncher,
        *,
        clock: Callable[[], float] = time.monotonic,
        event_sink: Callable[[Event], None] | None = None,
        audit_log: AuditLog | None = None,
        measure_backend: GpuBackend | None = None,
        manifest_dir: Path | None = None,
        seal_options: SealOptions = SealOptions(),  # noqa: B008 - frozen dataclass
        reply_timeout_s: float = 60.0,
        free_timeout_s: float = 1.0,
        exit_grace_s: float = 0.5,
        confirm_timeout_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._models = {m.name: _Model(m) for m in settings.models}
        self._ledgers = ledgers
        self._launcher = launcher
        self._clock = clock
        self._sink = event_sink
        self._audit = audit_log
        # residue: what a fresh sample shows for our hosts' pids (None: not measured)
        self._measure = None if measure_backend is None else measure_from_backend(measure_backend, self.pids)
        self._manifests = ManifestStore(manifest_dir)
        self._options = seal_options
        self._reply_timeout_s = reply_timeout_s
        self._free_timeout_s = free_timeout_s
        self._exit_grace_s = exit_grace_s
        self._confirm_timeout_s = confirm_timeout_s
        self._sleep = sleep
        self._hosts: dict[int, _Host] = {}
        self._departed: dict[int, set[int]] = {}  # gpu -> pids of ended hosts not yet confirmed gone in NVML
        self._pending: list[Event] = []

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        *,
        ledgers: Mapping[int, Ledger],
        backend: GpuBackend,
        clock: Callable[[], float] = time.monotonic,
        audit_log: AuditLog | None = None,
        event_sink: Callable[[Event], None] | None = None,
    ) -> ResidencyManager:
        """The app's wiring: CUDA hosts in spawned processes, residue measured through `backend` (NVML),
        manifests kept in the state dir."""
        from app.core import paths  # platformdirs: only where the app runs, never in the host
        from app.core.residency.host.process import ProcessHostLauncher

        return cls(
            settings,
            ledgers,
            ProcessHostLauncher(),
            clock=clock,
            event_sink=event_sink,
            audit_log=audit_log,
            measure_backend=backend,
            manifest_dir=paths.state_dir() / "manifests",
        )

    # --- ModelHolder -----------------------------------------------------------------------------

    def models(self) -> Sequence[ModelStatus]:
        return [self._status(m) for m in self._models.values()]

    def pids(self) -> set[int]:
        pids = {h.handle.pid for h in self._hosts.values()}
        for departed in self._departed.values():
            pids |= departed
        return pids

    def start_load(self, model: str) -> None:
        """Admit and start sealing `model`; returns at once. Raises the refusal (InsufficientVram,
        ModelFileError, GpuUnavailable) after recording it in the model's last_error and in events."""
        record = self._record(model)
        if record.state in (ModelState.LOADING, ModelState.RESIDENT):
            return
        path = str(record.config.path)
        gpu = record.gpu
        try:
            fd, size = open_model_file(path)  # a bad file allocates nothing and reserves nothing
        except VramError as exc:
            self._refused(record, exc, size_bytes=record.size_bytes or 0)
            raise
        os.close(fd)
        record.size_bytes = size
        host = self._hosts.get(gpu)
        overhead = 0 if host is not None else self._launcher.context_overhead_bytes
        try:
            reservation = self._ledger(gpu).reserve(size + overhead, f"{self.name}:{model}")
        except VramError as exc:
            self._refused(record, exc, size_bytes=size)
            raise
        try:
            if host is None:
                host = _Host(self._launcher.launch(gpu))
                self._hosts[gpu] = host
            o = self._options
            host.handle.conn.send(
                p.SealRequest(
                    model=model,
                    path=path,
                    chunk_size_bytes=o.chunk_size_bytes,
                    segment_bytes=o.segment_bytes,
                    staging_bytes=o.staging_bytes,
                    staging_buffers=o.staging_buffers,
                    reader_threads=o.reader_threads,
                    hash_threads=o.hash_threads,
                    device_digest=o.device_digest,
                    map_files=o.map_files,
                )
            )
        except (OSError, ValueError) as exc:
            self._ledger(gpu).release(reservation.id)
            error = errors.GpuUnavailable(reason=f"the residency host could not be started: {exc}", gpu=gpu)
            self._refused(record, error, size_bytes=size)
            raise error from exc
        host.models.add(model)
        record.state = ModelState.LOADING
        record.reservation_id = reservation.id
        record.load_started_at = self._clock()
        record.done_bytes = 0
        record.last_error = None
        record.error = None
        record.cancelling = False
        logger.info("sealing %s (%d bytes) into GPU %d", model, size, gpu)

    def poll(self) -> Sequence[Event]:
        for gpu, host in list(self._hosts.items()):
            try:
                while host.handle.conn.poll(0):
                    self._handle(host, host.handle.conn.recv())
                if not host.handle.is_alive():
                    raise _HostGone
            except (_HostGone, EOFError, OSError):
                if self._hosts.get(gpu) is host:
                    self._host_died(host)
        out, self._pending = self._pending, []
        return out

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]:
        return self._free(models, reason, ModelState.EVICTED)

    def unload(self, model: str) -> Sequence[Event]:
        return self._free([model], "user", ModelState.UNLOADED)

    def set_hold(self, reason: str | None) -> None:
        pass  # only the engine loads our models: nothing comes back behind its back

    def update_settings(self, settings: Settings) -> None:
        """Models added to the settings become known (unloaded; the user or autoload loads them); a model
        whose entry changed takes the new entry unless it is in VRAM (then at its next load); a removed
        model that is not in VRAM is forgotten."""
        configured = {m.name: m for m in settings.models}
        for name, config in configured.items():
            record = self._models.get(name)
            if record is None:
                self._models[name] = _Model(config)
            elif record.config != config and record.state not in (ModelState.LOADING, ModelState.RESIDENT):
                record.config = config
        for name in [n for n in self._models if n not in configured]:
            if self._models[name].state not in (ModelState.LOADING, ModelState.RESIDENT):
                del self._models[name]

    def close(self) -> Sequence[Event]:
        held = [n for n, r in self._models.items() if r.state in (ModelState.LOADING, ModelState.RESIDENT)]
        events = self._free(held, "shutdown", ModelState.UNLOADED)
        for host in list(self._hosts.values()):
            self._shutdown_host(host)
        return events

    # --- beyond the protocol -----------------------------------------------------------------------

    def reload(self, model: str) -> Sequence[Event]:
        """Seal again (freeing the resident copy first); the VramSealed event says if the file changed."""
        events: list[Event] = []
        if self._record(model).state == ModelState.RESIDENT:
            events.extend(self._free([model], "reload", ModelState.EVICTED))
        self.start_load(model)
        return events

    def load_blocking(
        self,
        model: str,
        progress: Callable[[int, int], None] | None = None,
        timeout_s: float | None = None,
    ) -> ev.VramSealed | None:
        """Load and wait (CLI, tests). Returns the VramSealed event (None if already resident); raises the
        load's error; on timeout cancels the load and raises TimeoutError."""
        record = self._record(model)
        if record.state == ModelState.RESIDENT:
            return None
        self.start_load(model)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        sealed: ev.VramSealed | None = None
        while True:
            for event in self.poll():
                if getattr(event, "model", None) != model:
                    continue
                if isinstance(event, ev.LoadProgress) and progress is not None:
                    progress(event.done_bytes, event.total_bytes)
                elif isinstance(event, ev.VramSealed):
                    sealed = event
            state = self._models[model].state  # (changed by poll)
            if state == ModelState.RESIDENT and sealed is not None:
                return sealed
            if state != ModelState.LOADING:
                raise record.error or VramError(record.last_error or f"loading {model} did not finish")
            if deadline is not None and self._clock() >= deadline:
                self._free([model], "timeout", ModelState.FAILED)
                raise TimeoutError(f"loading {model} took longer than {timeout_s:g} s; cancelled")
            host = self._hosts.get(record.gpu)
            if host is not None:
                multiprocessing.connection.wait([host.handle.conn], timeout=0.05)

    def verify(self, model: str) -> concurrent.futures.Future[Event]:
        """The holder contract's verify: the check's result (or its error) as a future. The host hashes on
        the GPU (an 8 GB model in well under a second on an H200); bounded by reply_timeout_s."""
        future: concurrent.futures.Future[Event] = concurrent.futures.Future()
        try:
            future.set_result(self.verify_now(model))
        except VramError as exc:
            future.set_exception(exc)
        return future

    def verify_now(self, model: str) -> ev.SealVerified:
        """Rehash what is in VRAM against the seal's manifest. Raises errors.SealVerificationFailed naming the
        damaged chunks (and emits the critical SealVerificationFailed event)."""
        record = self._record(model)
        host = self._hosts.get(record.gpu)
        if record.state != ModelState.RESIDENT or host is None or record.manifest is None:
            raise InvalidInput(f"{model} is not resident ({record.state}); load it first", field_name="model")
        reply = self._request(host, p.VerifyRequest(model), model, p.Verified)
        assert isinstance(reply, p.Verified)
        manifest = record.manifest
        damaged = manifest.damaged_chunks(reply.chunk_digests)
        if damaged:
            self._emit(
                ev.SealVerificationFailed(
                    at=self._clock(),
                    wall_time=time.time(),
                    model=model,
                    gpu=record.gpu,
                    damaged_chunks=tuple(damaged),
                    chunk_size_bytes=manifest.chunk_size_bytes,
                )
            )
            raise errors.SealVerificationFailed(
                model=model,
                gpu=record.gpu,
                damaged_chunks=damaged,
                chunk_size_bytes=manifest.chunk_size_bytes,
            )
        verified = ev.SealVerified(
            at=self._clock(),
            wall_time=time.time(),
            model=model,
            gpu=record.gpu,
            digest=manifest.digest,
            seconds=reply.seconds,
        )
        self._emit(verified)
        return verified

    def tamper_for_tests(self, model: str, offset: int, xor_mask: int = 0xFF) -> None:
        """Tests only: flip bits of one byte of a resident model in VRAM (to prove verify catches it)."""
        record = self._record(model)
        host = self._hosts.get(record.gpu)
        if record.state != ModelState.RESIDENT or host is None:
            raise InvalidInput(f"{model} is not resident", field_name="model")
        self._request(host, p.TamperRequest(model, offset, xor_mask), model, p.Tampered)

    def manifest(self, model: str) -> Manifest | None:
        """The manifest of the resident seal, or the last one known (also from an earlier run)."""
        record = self._record(model)
        return record.manifest or self._manifests.load(model)

    def host_handle(self, gpu: int) -> HostHandle | None:
        """The running host of `gpu` (tests kill it to prove death is noticed)."""
        host = self._hosts.get(gpu)
        return None if host is None else host.handle

    # --- replies from hosts ------------------------------------------------------------------------

    def _handle(self, host: _Host, reply: object) -> None:
        if isinstance(reply, p.Ready):
            host.ready = True
        elif isinstance(reply, p.Progress):
            record = self._models.get(reply.model)
            if record is not None and record.state == ModelState.LOADING:
                record.done_bytes = reply.done_bytes
                self._emit(
                    ev.LoadProgress(
                        at=self._clock(),
                        model=reply.model,
                        gpu=record.gpu,
                        done_bytes=reply.done_bytes,
                        total_bytes=reply.total_bytes,
                    )
                )
        elif isinstance(reply, p.Sealed):
            self._sealed(host, reply)
        elif isinstance(reply, p.Failed):
            self._failed(host, reply)
        else:
            logger.debug("residency host gpu %d: unexpected %s", host.handle.gpu, type(reply).__name__)

    def _sealed(self, host: _Host, reply: p.Sealed) -> None:
        record = self._models.get(reply.model)
        if record is None or record.state != ModelState.LOADING:
            logger.warning("%s was sealed but is no longer loading; freeing it", reply.model)
            host.handle.conn.send(p.FreeRequest(reply.model))
            return
        previous = self._manifests.load(reply.model)
        same = None if previous is None else reply.manifest.same_content_as(previous)
        changed = same is False
        self._manifests.save(reply.model, reply.manifest, source=str(record.config.path))
        if record.reservation_id is not None:
            self._ledger(record.gpu).mark_allocated(record.reservation_id)
            record.reservation_id = None
        now = self._clock()
        seconds = max(reply.seconds, 1e-9)
        size = reply.manifest.total_bytes
        record.state = ModelState.RESIDENT
        record.manifest = reply.manifest
        record.size_bytes = size
        record.done_bytes = None
        record.load_seconds = reply.seconds
        record.load_bytes_per_s = size / seconds
        record.last_used_at = now
        wall = time.time()
        self._emit(ev.VramAllocated(at=now, wall_time=wall, model=reply.model, gpu=record.gpu, bytes=size))
        self._emit(
            ev.VramSealed(
                at=now,
                wall_time=wall,
                model=reply.model,
                gpu=record.gpu,
                bytes=size,
                digest=reply.manifest.digest,
                seconds=reply.seconds,
                bytes_per_s=size / seconds,
                file_changed=changed,
            )
        )
        logger.info(
            "sealed %s: %d bytes in %.2f s (file changed: %s)", reply.model, size, reply.seconds, changed
        )

    def _failed(self, host: _Host, reply: p.Failed) -> None:
        if reply.request == "startup":
            error = reply.error()
            for name in list(host.models):
                loading = self._models[name]
                self._release(loading)
                self._load_failed(loading, error)
            host.models.clear()
            self._forget_host(host)
            host.handle.join(5.0)
            self._confirm(host.handle.gpu)
            return
        record = self._models.get(reply.model)
        if reply.request != "SealRequest" or record is None:
            logger.warning("residency host gpu %d: %s", host.handle.gpu, reply.message)
            return
        self._release(record)
        host.models.discard(reply.model)
        if reply.code == "seal_cancelled" or record.cancelling:
            return  # the evict that cancelled it reports it
        self._load_failed(record, reply.error())
        if not host.models:
            self._shutdown_host(host)
            self._confirm(host.handle.gpu)  # nothing of ours may stay on the GPU after a failed load

    def _load_failed(self, record: _Model, error: VramError) -> None:
        record.state = ModelState.FAILED
        record.done_bytes = None
        record.last_error = error.message
        record.error = error
        if error.code == errors.CudaAllocationFailed.code:
            count = getattr(self._ledger(record.gpu), "count_failure", None)
            if count is not None:
                count(error.code)
        self._emit(
            ev.VramAllocationFailed(
                at=self._clock(),
                wall_time=time.time(),
                model=record.config.name,
                gpu=record.gpu,
                bytes=record.size_bytes or 0,
                reason=error.code,
                message=error.message,
            )
        )
        logger.warning("loading %s failed: %s", record.config.name, error.message)

    def _refused(self, record: _Model, error: VramError, *, size_bytes: int) -> None:
        if isinstance(error, InsufficientVram):  # not a failure: it waits for room, and is retried then
            if record.state != ModelState.EVICTED:  # an evicted model stays due for restore as it is
                record.state = ModelState.WAITING
        elif record.state != ModelState.EVICTED:
            record.state = ModelState.FAILED
        record.last_error = error.message
        record.error = error
        now, wall = self._clock(), time.time()
        name, gpu = record.config.name, record.gpu
        self._emit(
            ev.VramAllocationFailed(
                at=now,
                wall_time=wall,
                model=name,
                gpu=gpu,
                bytes=size_bytes,
                reason=error.code,
                message=error.message,
            )
        )
        if isinstance(error, InsufficientVram):
            self._emit(
                ev.LoadRefused(
                    at=now,
                    wall_time=wall,
                    model=name,
                    gpu=gpu,
                    reason=error.code,
                    need_bytes=error.needed_bytes,
                    available_bytes=error.available_bytes,
                )
            )

    def _host_died(self, host: _Host) -> None:
        handle = host.handle
        if handle.is_alive():
            handle.kill()
        handle.join(1.0)  # SIGKILL ends even a stopped process at once
        exit_code = handle.exit_code()
        names = tuple(sorted(host.models))
        now, wall = self._clock(), time.time()
        logger.error(
            "residency host pid %d (GPU %d) died (exit code %s) holding %s",
            handle.pid,
            handle.gpu,
            exit_code,
            ", ".join(names) or "nothing",
        )
        self._emit(
            ev.HostDied(
                at=now, wall_time=wall, gpu=handle.gpu, pid=handle.pid, exit_code=exit_code, models=names
            )
        )
        self._forget_host(host)
        residue = self._confirm(handle.gpu)
        for name in names:
            record = self._models[name]
            freed = record.size_bytes or 0 if record.state == ModelState.RESIDENT else 0
            self._release(record)
            record.state = ModelState.EVICTED
            record.done_bytes = None
            record.last_error = f"the residency host died (exit code {exit_code})"
            record.error = errors.GpuUnavailable(reason=record.last_error, gpu=handle.gpu)
            self._emit(
                ev.VramDeallocated(
                    at=now,
                    wall_time=wall,
                    model=name,
                    gpu=handle.gpu,
                    bytes=freed,
                    reason="host_died",
                    residue_bytes=residue,
                )
            )
        host.models.clear()

    # --- freeing ----------------------------------------------------------------------------------

    def _free(self, models: Sequence[str], reason: str, new_state: ModelState) -> list[Event]:
        out: list[Event] = []  # other events seen meanwhile (progress, a death) wait for the next poll()
        by_gpu: dict[int, list[_Model]] = {}
        for name in models:
            record = self._record(name)
            if record.state in (ModelState.LOADING, ModelState.RESIDENT):
                by_gpu.setdefault(record.gpu, []).append(record)
            elif new_state == ModelState.UNLOADED and record.state == ModelState.EVICTED:
                record.state = ModelState.UNLOADED  # the user's unload: do not restore it later
        for gpu, records in by_gpu.items():
            freed: list[tuple[_Model, int]] = []
            host = self._hosts.get(gpu)
            for record in records:
                nbytes = 0
                if host is not None and self._hosts.get(gpu) is host:
                    record.cancelling = record.state == ModelState.LOADING
                    try:
                        reply = self._request(
                            host,
                            p.FreeRequest(record.config.name),
                            record.config.name,
                            p.Freed,
                            timeout_s=self._free_timeout_s,
                        )
                        assert isinstance(reply, p.Freed)
                        nbytes = reply.nbytes
                    except VramError as exc:
                        logger.warning("freeing %s: %s", record.config.name, exc)
                    host.models.discard(record.config.name)
                if record.state == ModelState.EVICTED:  # the host died meanwhile: already reported
                    record.state = new_state
                    continue
                self._release(record)
                record.state = new_state
                record.done_bytes = None
                record.cancelling = False
                freed.append((record, nbytes))
            ended = host is not None and not host.models and self._hosts.get(gpu) is host
            if ended and host is not None:
                self._shutdown_host(host)
            residue = self._confirm(gpu)
            now, wall = self._clock(), time.time()
            for record, nbytes in freed:
                event = ev.VramDeallocated(
                    at=now,
                    wall_time=wall,
                    model=record.config.name,
                    gpu=gpu,
                    bytes=nbytes,
                    reason=reason,
                    residue_bytes=residue,
                )
                out.append(self._emit(event, pending=False))
        return out

    def _shutdown_host(self, host: _Host) -> None:
        handle = host.handle
        try:
            handle.conn.send(p.ShutdownRequest())
            deadline = self._clock() + self._exit_grace_s
            while self._clock() < deadline:
                if not handle.conn.poll(0.05):
                    if not handle.is_alive():
                        break
                    continue
                reply = handle.conn.recv()
                if isinstance(reply, p.Bye):
                    break
                self._handle(host, reply)
        except (EOFError, OSError):
            pass
        if not handle.join(self._exit_grace_s):
            logger.warning("residency host pid %d did not exit; killing it", handle.pid)
            handle.kill()
            handle.join(1.0)  # SIGKILL ends even a stopped process at once
        self._forget_host(host)

    def _forget_host(self, host: _Host) -> None:
        handle = host.handle
        if self._hosts.get(handle.gpu) is host:
            del self._hosts[handle.gpu]
            self._departed.setdefault(handle.gpu, set()).add(handle.pid)
        with contextlib.suppress(OSError):
            handle.conn.close()

    def _confirm(self, gpu: int) -> int | None:
        """Bytes NVML still shows for our processes on `gpu` after a free, waiting up to confirm_timeout_s
        for the host to disappear; None when it cannot be measured or a host still holds other models."""
        if gpu in self._hosts:
            return None
        if self._measure is None:
            self._departed.pop(gpu, None)  # cannot be checked: trust that the ended host took it all
            return None
        deadline = self._clock() + self._confirm_timeout_s
        while True:
            measured = self._measure(gpu)
            if measured is None:
                return None
            if measured <= 0 or self._clock() >= deadline:
                break
            self._sleep(0.01)
        if measured <= 0:
            self._departed.pop(gpu, None)
        else:
            logger.warning("GPU %d: %d bytes still held by our processes after the free", gpu, measured)
        return measured

    # --- helpers ----------------------------------------------------------------------------------

    def _request(
        self,
        host: _Host,
        request: p.Request,
        model: str,
        want: type[Any],
        *,
        timeout_s: float | None = None,
    ) -> object:
        """Send `request` and wait for its reply (handling other replies meanwhile). Raises the host's error,
        or GpuUnavailable when the host dies or does not answer in time; a host that does not answer in
        time is killed (it is hung or stopped, and killing it is what frees its VRAM)."""
        handle = host.handle
        timeout_s = self._reply_timeout_s if timeout_s is None else timeout_s
        try:
            handle.conn.send(request)
            deadline = self._clock() + timeout_s
            while True:
                if handle.conn.poll(0.05):
                    reply = handle.conn.recv()
                    if isinstance(reply, want) and getattr(reply, "model", None) == model:
                        return reply
                    if (
                        isinstance(reply, p.Failed)
                        and reply.model == model
                        and reply.request == type(request).__name__
                    ):
                        raise reply.error()
                    self._handle(host, reply)
                    if self._hosts.get(handle.gpu) is not host:
                        raise _HostGone
                elif not handle.is_alive():
                    raise _HostGone
                elif self._clock() >= deadline:
                    logger.warning(
                        "residency host pid %d did not answer %s in %g s; killing it",
                        handle.pid,
                        type(request).__name__,
                        timeout_s,
                    )
                    if self._hosts.get(handle.gpu) is host:
                        self._host_died(host)
                    raise errors.GpuUnavailable(
                        reason=f"the residency host did not answer {type(request).__name__} "
                        f"in {timeout_s:g} s",
                        gpu=handle.gpu,
                    )
        except (_HostGone, EOFError, OSError):
            if self._hosts.get(handle.gpu) is host:
                self._host_died(host)
            raise errors.GpuUnavailable(reason="the residency host died", gpu=handle.gpu) from None

    def _release(self, record: _Model) -> None:
        if record.reservation_id is not None:
            self._ledger(record.gpu).release(record.reservation_id)
            record.reservation_id = None

    def _ledger(self, gpu: int) -> Ledger:
        for_gpu = getattr(self._ledgers, "for_gpu", None)
        if for_gpu is not None:
            ledger: Ledger = for_gpu(gpu)
            return ledger
        try:
            return self._ledgers[gpu]
        except KeyError:
            raise errors.GpuUnavailable(reason="no admission ledger for it (not watched)", gpu=gpu) from None

    def _record(self, model: str) -> _Model:
        try:
            return self._models[model]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none configured"
            raise InvalidInput(
                f"unknown model {model!r} (known: {known})", field_name="model", value=model
            ) from None

    def _emit(self, event: Event, *, pending: bool = True) -> Event:
        """Audit it, hand it to the sink, and (unless the caller returns it itself) queue it for poll()."""
        if pending:
            self._pending.append(event)
        if self._audit is not None and not isinstance(event, ev.LoadProgress):
            self._audit.write(event)
        if self._sink is not None:
            try:
                self._sink(event)
            except Exception:
                logger.exception("the event sink failed on %s", event.kind)
        return event

    def _status(self, record: _Model) -> ModelStatus:
        loading = record.state == ModelState.LOADING
        return ModelStatus(
            name=record.config.name,
            gpu=record.gpu,
            size_bytes=record.size_bytes,
            state=record.state,
            holder=self.name,
            digest=record.manifest.digest
            if record.manifest and record.state == ModelState.RESIDENT
            else None,
            priority=record.config.priority,
            last_used_at=record.last_used_at,
            load_seconds=record.load_seconds,
            load_bytes_per_s=record.load_bytes_per_s,
            progress_done_bytes=record.done_bytes if loading else None,
            progress_total_bytes=record.size_bytes if loading else None,
            last_error=record.last_error,
        )


def measure_from_backend(backend: GpuBackend, pids: Callable[[], set[int]]) -> MeasureOurs:
    """A residue measure that takes a fresh sample and sums what our pids use on the GPU (None when NVML
    cannot say per-process usage, e.g. under Windows WDDM)."""

    def measure(gpu: int) -> int | None:
        snapshot = backend.sample().gpu(gpu)
        if snapshot is None:
            return None
        ours = pids()
        total = 0
        for process in snapshot.processes:
            if process.pid in ours:
                if process.used_bytes is None:
                    return None
                total += process.used_bytes
        return total

    return measure
