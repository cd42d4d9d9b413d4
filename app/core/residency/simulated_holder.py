"""SimulatedHolder: models that exist only on a simulated GPU (replay, demos, `--simulate` without files).

It follows the ModelHolder protocol exactly as the built-in residency manager does (admission through the
ledger first, progress while loading, bytes accounted on the simulated GPU under a host PID of ours), but
loads at a fixed simulated rate instead of reading files, so `vram-steward replay` can run hours of
scenario time in a second.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from app.core import events as ev
from app.core.errors import InsufficientVram, InvalidInput
from app.core.events import Event
from app.core.gpu.simulated import SimulatedBackend
from app.core.holders import HolderRole, ModelState, ModelStatus, unsupported_verify
from app.core.residency.ledger import Ledgers
from app.core.settings import Settings

logger = logging.getLogger(__name__)

SIMULATED_HOST_PID_BASE = 4_000_000  # above Linux's pid_max, so never a real process


@dataclass(frozen=True)
class SimulatedModel:
    name: str
    gpu: int
    size_bytes: int
    priority: int = 0


@dataclass
class _Load:
    reservation_id: str
    started_at: float
    done_at: float


class SimulatedHolder:
    """The built-in residency on a simulated GPU: same contract, allocations in the simulator."""

    name = "builtin"
    role = HolderRole.SELF

    def __init__(
        self,
        backend: SimulatedBackend,
        models: Sequence[SimulatedModel],
        ledgers: Ledgers,
        *,
        clock: Callable[[], float],
        load_bytes_per_s: float = 8e9,
    ) -> None:
        self._backend = backend
        self._ledgers = ledgers
        self._clock = clock
        self._rate = load_bytes_per_s
        self._status = {
            m.name: ModelStatus(
                name=m.name,
                gpu=m.gpu,
                size_bytes=m.size_bytes,
                state=ModelState.UNLOADED,
                holder=self.name,
                priority=m.priority,
            )
            for m in models
        }
        self._loads: dict[str, _Load] = {}
        self._pending: list[Event] = []  # refusals, reported by the next poll()
        self._evicted_by_us: set[str] = set()

    @staticmethod
    def host_pid(gpu: int) -> int:
        return SIMULATED_HOST_PID_BASE + gpu

    def models(self) -> Sequence[ModelStatus]:
        return list(self._status.values())

    def pids(self) -> set[int]:
        gpus = {s.gpu for s in self._status.values() if s.state in (ModelState.RESIDENT, ModelState.LOADING)}
        return {self.host_pid(g) for g in gpus}

    def start_load(self, model: str) -> None:
        status = self._get(model)
        if status.state in (ModelState.RESIDENT, ModelState.LOADING):
            return
        size = status.size_bytes or 0
        # no pid: the simulated host is not a real process, and the ledger expires reservations of dead pids
        try:
            reservation = self._ledgers.for_gpu(status.gpu).reserve(size, holder=model)
        except InsufficientVram as exc:  # as the real residency: the model waits for room, retried then
            state = status.state if status.state == ModelState.EVICTED else ModelState.WAITING
            self._status[model] = replace(status, state=state, last_error=exc.message)
            self._pending.append(
                ev.LoadRefused(
                    at=self._clock(),
                    model=model,
                    gpu=status.gpu,
                    reason=exc.code,
                    need_bytes=exc.needed_bytes,
                    available_bytes=exc.available_bytes,
                )
            )
            raise
        now = self._clock()
        self._loads[model] = _Load(reservation.id, now, now + size / self._rate)
        self._status[model] = replace(
            status,
            state=ModelState.LOADING,
            progress_done_bytes=0,
            progress_total_bytes=size,
            last_error=None,
        )

    def poll(self) -> Sequence[Event]:
        out, self._pending = self._pending, []
        now = self._clock()
        for model, load in list(self._loads.items()):
            status = self._status[model]
            size = status.size_bytes or 0
            if now < load.done_at:
                done = int(size * (now - load.started_at) / max(load.done_at - load.started_at, 1e-9))
                self._status[model] = replace(status, progress_done_bytes=done)
                out.append(
                    ev.LoadProgress(at=now, model=model, gpu=status.gpu, done_bytes=done, total_bytes=size)
                )
                continue
            del self._loads[model]
            ledger = self._ledgers.for_gpu(status.gpu)
            try:
                self._backend.allocate(status.gpu, self.host_pid(status.gpu), "vram-steward-host", size)
            except Exception as exc:  # SimulatedOutOfMemory: someone took the memory after admission
                ledger.release(load.reservation_id)
                self._status[model] = replace(status, state=ModelState.FAILED, last_error=str(exc))
                out.append(
                    ev.VramAllocationFailed(
                        at=now,
                        model=model,
                        gpu=status.gpu,
                        bytes=size,
                        reason="cuda_allocation_failed",
                        message=str(exc),
                    )
                )
                continue
            ledger.mark_allocated(load.reservation_id)
            seconds = max(load.done_at - load.started_at, 1e-9)
            self._status[model] = replace(
                status,
                state=ModelState.RESIDENT,
                progress_done_bytes=None,
                progress_total_bytes=None,
                load_seconds=seconds,
                load_bytes_per_s=size / seconds,
                last_used_at=now,
                digest=f"simulated:{model}",
            )
            self._evicted_by_us.discard(model)
            out.append(ev.VramAllocated(at=now, model=model, gpu=status.gpu, bytes=size))
        return out

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]:
        return self._free(models, reason, ModelState.EVICTED)

    def unload(self, model: str) -> Sequence[Event]:
        return self._free([model], "user", ModelState.UNLOADED)

    def _free(self, models: Sequence[str], reason: str, new_state: ModelState) -> list[Event]:
        out: list[Event] = []
        now = self._clock()
        for model in models:
            status = self._get(model)
            load = self._loads.pop(model, None)
            if load is not None:
                self._ledgers.for_gpu(status.gpu).release(load.reservation_id)
                self._status[model] = replace(status, state=new_state, progress_done_bytes=None)
                continue
            if status.state != ModelState.RESIDENT:
                continue
            size = status.size_bytes or 0
            self._backend.free(status.gpu, self.host_pid(status.gpu), size)
            self._status[model] = replace(status, state=new_state)
            out.append(ev.VramDeallocated(at=now, model=model, gpu=status.gpu, bytes=size, reason=reason))
        return out

    def set_hold(self, reason: str | None) -> None:
        pass  # only we load our models: nothing loads behind our back

    def verify(self, model: str) -> concurrent.futures.Future[Event]:
        """A simulated model has no bytes in VRAM to hash: say so rather than claim it is intact."""
        self._get(model)
        return unsupported_verify(model, "the simulator")

    def update_settings(self, settings: Settings) -> None:
        pass  # the scenario defines the models

    def close(self) -> Sequence[Event]:
        resident = [
            n for n, s in self._status.items() if s.state in (ModelState.RESIDENT, ModelState.LOADING)
        ]
        return self._free(resident, "shutdown", ModelState.UNLOADED)

    def _get(self, model: str) -> ModelStatus:
        try:
            return self._status[model]
        except KeyError:
            raise InvalidInput(f"unknown model {model!r}", field_name="model", value=model) from None
