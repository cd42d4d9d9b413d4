"""Reservations that other processes take through the API before they allocate VRAM (the study's
orchestrator-level admission control).

They go into the same per-GPU ledger as our own loads, so they count in admission exactly like them. A
request that does not fit either fails at once (`insufficient_vram`) or, when it asks to wait (`wait_s`),
joins a first-in first-out queue for its GPU: the head of the queue is admitted as soon as it fits, and
nothing behind it jumps ahead. A reservation ends when its client releases it, when its TTL runs out before
the client said it allocated (the ledger drops it), or, once marked allocated, when a sample shows the bytes.

`ReservationBook` holds no engine state and never waits: the API calls `pump()` when VRAM may have come free
(after every engine tick, after a release) and does the waiting itself. Thread-safe (one lock).
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.core.errors import InsufficientVram, InvalidInput, VramError
from app.core.residency.ledger import RETRY_AFTER_FOREIGN_S, RETRY_AFTER_OUTSTANDING_S, Ledgers
from app.core.units import format_bytes

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 300.0
MAX_TTL_S = 86_400.0
MAX_WAIT_S = 3_600.0
MAX_HOLDER_CHARS = 200
MAX_WAITING_PER_GPU = 256
KEEP_FINISHED_S = 600.0  # how long an ended reservation can still be looked up by id
MAX_RECORDS = 10_000


class ReservationState(enum.StrEnum):
    WAITING = "waiting"  # queued; admitted when it reaches the head of its GPU's queue and fits
    GRANTED = "granted"  # admitted: its bytes count in admission until released, allocated or expired
    ALLOCATED = "allocated"  # the client said it allocated; counted until a sample shows the bytes
    SETTLED = "settled"  # allocated, and a sample shows the bytes: NVML's free VRAM accounts for them now
    RELEASED = "released"  # the client released it
    EXPIRED = "expired"  # its TTL ran out before the client said it allocated
    TIMED_OUT = "timed_out"  # it waited wait_s in the queue without fitting
    CANCELLED = "cancelled"  # released while still waiting


ENDED = frozenset(
    {
        ReservationState.SETTLED,
        ReservationState.RELEASED,
        ReservationState.EXPIRED,
        ReservationState.TIMED_OUT,
        ReservationState.CANCELLED,
    }
)


class UnknownReservation(VramError):
    code = "not_found"
    http_status = 404

    def __init__(self, reservation_id: str) -> None:
        super().__init__(
            f"no reservation with id {reservation_id!r} (ended reservations are forgotten after "
            f"{KEEP_FINISHED_S:g} s)",
            details={"id": reservation_id},
            suggestions=["List the current ones with GET /v1/reservations"],
        )


class QueueFull(VramError):
    code = "queue_full"
    retriable = True
    http_status = 429

    def __init__(self, gpu: int, waiting: int) -> None:
        super().__init__(
            f"the reservation queue of GPU {gpu} is full ({waiting} requests waiting)",
            details={"gpu": gpu, "waiting": waiting},
            suggestions=["Retry later, or ask without wait_s to get an answer at once"],
            retry_after_s=RETRY_AFTER_FOREIGN_S,
        )


@dataclass(frozen=True)
class ReservationRequest:
    """A validated `POST /v1/reservations` body."""

    gpu: int
    nbytes: int
    holder: str
    ttl_s: float
    wait_s: float  # 0: answer at once


@dataclass(frozen=True)
class ApiReservation:
    """One reservation taken through the API, in whatever state it is."""

    id: str
    gpu: int
    nbytes: int
    holder: str
    ttl_s: float
    state: ReservationState
    created_at: float  # book clock
    wait_until: float | None  # end of the queue wait; None: never queued
    ledger_id: str | None = None  # the ledger's reservation, once granted
    granted_at: float | None = None
    ended_at: float | None = None
    available_bytes_at_end: int | None = None  # for a timed-out wait: what was available then

    def to_json(self, now: float, position: int | None = None) -> dict[str, Any]:
        expires_in = None
        if self.state == ReservationState.GRANTED and self.granted_at is not None:
            expires_in = max(self.granted_at + self.ttl_s - now, 0.0)
        return {
            "id": self.id,
            "gpu": self.gpu,
            "bytes": self.nbytes,
            "holder": self.holder,
            "ttl_s": self.ttl_s,
            "state": str(self.state),
            "position": position,
            "waited_s": ((self.granted_at or self.ended_at or now) - self.created_at)
            if self.wait_until is not None
            else 0.0,
            "wait_remaining_s": max(self.wait_until - now, 0.0)
            if self.wait_until is not None and self.state == ReservationState.WAITING
            else None,
            "expires_in_s": expires_in,
        }


def parse_reservation_request(
    body: Mapping[str, Any], total_bytes_by_gpu: Mapping[int, int | None]
) -> ReservationRequest:
    """Validate a request body. `total_bytes_by_gpu`: the GPUs that exist now and their sizes (None: not
    measurable now; the ledger then refuses with gpu_unavailable).

    Raises InvalidInput naming the field, the value and what was expected: a size that could never fit on
    the GPU (over its total) is a bad request, not a retriable refusal.
    """
    allowed = {"gpu", "bytes", "holder", "ttl_s", "wait_s"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(allowed))}",
            field_name=unknown[0],
            value=body[unknown[0]],
        )
    for required in ("gpu", "bytes", "holder"):
        if required not in body:
            raise InvalidInput(f"missing field {required!r}", field_name=required, value=None)
    gpu = body["gpu"]
    if not _is_int(gpu) or gpu < 0:
        raise InvalidInput(
            f"gpu: expected a GPU index (whole number >= 0), got {gpu!r}", field_name="gpu", value=gpu
        )
    if gpu not in total_bytes_by_gpu:
        known = ", ".join(str(g) for g in sorted(total_bytes_by_gpu)) or "none"
        raise InvalidInput(f"gpu: unknown GPU {gpu}; known: {known}", field_name="gpu", value=gpu)
    nbytes = body["bytes"]
    if not _is_int(nbytes) or nbytes <= 0:
        raise InvalidInput(
            f"bytes: expected whole bytes > 0, got {nbytes!r}", field_name="bytes", value=nbytes
        )
    total = total_bytes_by_gpu[gpu]
    if total is not None and nbytes > total:
        raise InvalidInput(
            f"bytes: {nbytes} ({format_bytes(nbytes)}) can never fit on GPU {gpu}, which has "
            f"{format_bytes(total)} in total",
            field_name="bytes",
            value=nbytes,
        )
    holder = body["holder"]
    if (
        not isinstance(holder, str)
        or not holder.strip()
        or len(holder) > MAX_HOLDER_CHARS
        or not holder.isprintable()
    ):
        raise InvalidInput(
            f"holder: expected a printable name of 1 to {MAX_HOLDER_CHARS} characters, got {holder!r}",
            field_name="holder",
            value=holder,
        )
    ttl_s = _seconds(body, "ttl_s", DEFAULT_TTL_S, minimum_exclusive=0.0, maximum=MAX_TTL_S)
    wait_s = _seconds(body, "wait_s", 0.0, minimum_exclusive=None, maximum=MAX_WAIT_S)
    return ReservationRequest(gpu=gpu, nbytes=nbytes, holder=holder, ttl_s=ttl_s, wait_s=wait_s)


def parse_seconds(raw: str, name: str, maximum: float) -> float:
    """A query parameter in seconds (`?wait_s=`): a finite number from 0 to `maximum`."""
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(
            f"{name}: expected seconds (a number), got {raw!r}", field_name=name, value=raw
        ) from None
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise InvalidInput(
            f"{name}: expected 0 to {maximum:g} seconds, got {raw!r}", field_name=name, value=raw
        )
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(
    body: Mapping[str, Any], name: str, default: float, *, minimum_exclusive: float | None, maximum: float
) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum_exclusive is not None and value <= minimum_exclusive:
        ok = False
    if ok and (value < 0 or value > maximum):
        ok = False
    if not ok:
        low = f"> {minimum_exclusive:g}" if minimum_exclusive is not None else ">= 0"
        raise InvalidInput(
            f"{name}: expected seconds {low} and <= {maximum:g}, got {value!r}", field_name=name, value=value
        )
    return float(value)


class ReservationBook:
    """The API's reservations and the per-GPU wait queues, on top of the shared ledgers."""

    def __init__(
        self,
        ledgers: Ledgers,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_waiting_per_gpu: int = MAX_WAITING_PER_GPU,
    ) -> None:
        self._ledgers = ledgers
        self._clock = clock
        self._max_waiting = max_waiting_per_gpu
        self._lock = threading.Lock()
        self._records: dict[str, ApiReservation] = {}
        self._queues: dict[int, list[str]] = {}

    # --- requests ------------------------------------------------------------------------------------

    def request(self, req: ReservationRequest) -> ApiReservation:
        """Admit now (state granted), queue (state waiting, when `req.wait_s` > 0) or raise.

        Raises InsufficientVram (does not fit, or others wait ahead and the caller would not wait),
        GpuUnavailable (the ledger cannot measure the GPU) or QueueFull.
        """
        with self._lock:
            now = self._clock()
            self._refresh_locked(now)
            queue = self._queues.setdefault(req.gpu, [])
            ledger = self._ledgers.for_gpu(req.gpu)
            if not queue and (req.wait_s <= 0 or ledger.available_bytes() >= req.nbytes):
                try:
                    granted = ledger.reserve(req.nbytes, req.holder, ttl_s=req.ttl_s)
                except InsufficientVram:
                    if req.wait_s <= 0:
                        raise
                else:
                    record = ApiReservation(
                        id=granted.id,
                        gpu=req.gpu,
                        nbytes=req.nbytes,
                        holder=req.holder,
                        ttl_s=req.ttl_s,
                        state=ReservationState.GRANTED,
                        created_at=now,
                        wait_until=None,
                        ledger_id=granted.id,
                        granted_at=now,
                    )
                    self._store_locked(record)
                    return record
            if req.wait_s <= 0:
                raise self._queued_ahead_locked(req, len(queue))
            if len(queue) >= self._max_waiting:
                raise QueueFull(req.gpu, len(queue))
            record = ApiReservation(
                id=uuid.uuid4().hex,
                gpu=req.gpu,
                nbytes=req.nbytes,
                holder=req.holder,
                ttl_s=req.ttl_s,
                state=ReservationState.WAITING,
                created_at=now,
                wait_until=now + req.wait_s,
            )
            self._store_locked(record)
            queue.append(record.id)
            logger.info(
                "GPU %d: %s waits for %s (position %d, up to %g s)",
                req.gpu,
                req.holder,
                format_bytes(req.nbytes),
                len(queue),
                req.wait_s,
            )
            return record

    def _current_locked(self, reservation_id: str, now: float) -> ApiReservation:
        """The record as of `now` (expiries and timeouts applied), or UnknownReservation."""
        self._refresh_locked(now)
        record = self._records.get(reservation_id)
        if record is None:
            raise UnknownReservation(reservation_id)
        return record

    def release(self, reservation_id: str) -> ApiReservation:
        """Release a granted reservation or cancel a waiting one. Releasing an ended one changes nothing."""
        with self._lock:
            now = self._clock()
            record = self._current_locked(reservation_id, now)
            if record.state == ReservationState.WAITING:
                self._queues[record.gpu].remove(record.id)
                record = replace(record, state=ReservationState.CANCELLED, ended_at=now)
            elif record.state in (ReservationState.GRANTED, ReservationState.ALLOCATED):
                assert record.ledger_id is not None
                self._ledgers.for_gpu(record.gpu).release(record.ledger_id)
                record = replace(record, state=ReservationState.RELEASED, ended_at=now)
            self._records[record.id] = record
        self.pump()
        return record

    def mark_allocated(self, reservation_id: str) -> ApiReservation:
        """The client allocated the bytes: the ledger counts them until a later sample shows them."""
        with self._lock:
            now = self._clock()
            record = self._current_locked(reservation_id, now)
            if record.state != ReservationState.GRANTED:
                raise InvalidInput(
                    f"reservation {reservation_id} is {record.state}; only a granted one can be marked "
                    "allocated",
                    field_name="state",
                    value=str(record.state),
                )
            assert record.ledger_id is not None
            self._ledgers.for_gpu(record.gpu).mark_allocated(record.ledger_id)
            record = replace(record, state=ReservationState.ALLOCATED)
            self._records[record.id] = record
            return record

    # --- the queue -----------------------------------------------------------------------------------

    def pump(self) -> list[ApiReservation]:
        """Admit queue heads that fit now, end waits that ran out. Returns the ones admitted."""
        with self._lock:
            return self._pump_locked(self._clock())

    def queue_lengths(self) -> dict[int, int]:
        """Waiting requests per GPU (the vram_reservation_queue_length metric)."""
        with self._lock:
            return {gpu: len(queue) for gpu, queue in self._queues.items()}

    def has_waiters(self) -> bool:
        with self._lock:
            return any(self._queues.values())

    # --- views ---------------------------------------------------------------------------------------

    def get(self, reservation_id: str) -> tuple[ApiReservation, int | None]:
        """The reservation and its queue position (1 = next; None when not waiting)."""
        with self._lock:
            now = self._clock()
            record = self._current_locked(reservation_id, now)
            return record, self._position_locked(record)

    def to_json(self, record: ApiReservation, position: int | None = None) -> dict[str, Any]:
        return record.to_json(self._clock(), position)

    def active(self) -> list[dict[str, Any]]:
        """Granted, allocated and waiting reservations, for `GET /v1/reservations`."""
        with self._lock:
            now = self._clock()
            self._refresh_locked(now)
            return [
                r.to_json(now, self._position_locked(r))
                for r in self._records.values()
                if r.state not in ENDED
            ]

    def queue_json(self) -> list[dict[str, Any]]:
        """The wait queues, head first, for the status document's `queue` field."""
        with self._lock:
            now = self._clock()
            out: list[dict[str, Any]] = []
            for gpu in sorted(self._queues):
                for position, rid in enumerate(self._queues[gpu], start=1):
                    out.append(self._records[rid].to_json(now, position))
            return out

    def timeout_error(self, record: ApiReservation) -> InsufficientVram:
        """The problem a client gets for a wait that ran out."""
        available = record.available_bytes_at_end or 0
        error = InsufficientVram(
            gpu=record.gpu,
            needed_bytes=record.nbytes,
            available_bytes=available,
            holder=record.holder,
            retry_after_s=RETRY_AFTER_FOREIGN_S,
            suggestions=[
                f"Waited {(record.ended_at or record.created_at) - record.created_at:.0f} s in the queue of "
                f"GPU {record.gpu} without fitting: wait longer, or ask for less",
                "Close applications that use the GPU, or load a smaller model",
            ],
        )
        error.details.update({"id": record.id, "state": str(record.state)})
        return error

    # --- internals (lock held) -----------------------------------------------------------------------

    def _queued_ahead_locked(self, req: ReservationRequest, waiting: int) -> InsufficientVram:
        ledger = self._ledgers.for_gpu(req.gpu)
        error = InsufficientVram(
            gpu=req.gpu,
            needed_bytes=req.nbytes,
            available_bytes=ledger.available_bytes(),
            holder=req.holder,
            retry_after_s=RETRY_AFTER_OUTSTANDING_S,
            suggestions=[
                f"{waiting} request(s) wait ahead in the queue of GPU {req.gpu}: pass wait_s to join "
                "the queue",
                "Close applications that use the GPU, or wait and retry",
            ],
        )
        error.details["queued_ahead"] = waiting
        return error

    def _position_locked(self, record: ApiReservation) -> int | None:
        if record.state != ReservationState.WAITING:
            return None
        return self._queues[record.gpu].index(record.id) + 1

    def _store_locked(self, record: ApiReservation) -> None:
        self._records[record.id] = record
        if len(self._records) > MAX_RECORDS:
            ended = sorted(
                (r for r in self._records.values() if r.state in ENDED), key=lambda r: r.ended_at or 0
            )
            for old in ended[: len(self._records) - MAX_RECORDS]:
                del self._records[old.id]

    def _refresh_locked(self, now: float) -> None:
        self._pump_locked(now)
        for record in list(self._records.values()):
            if record.state in (ReservationState.GRANTED, ReservationState.ALLOCATED):
                assert record.ledger_id is not None
                if self._ledgers.for_gpu(record.gpu).get(record.ledger_id) is not None:
                    continue
                if record.state == ReservationState.ALLOCATED:
                    self._records[record.id] = replace(record, state=ReservationState.SETTLED, ended_at=now)
                else:
                    self._records[record.id] = replace(record, state=ReservationState.EXPIRED, ended_at=now)
                    logger.info(
                        "GPU %d: API reservation %s of %s expired", record.gpu, record.id, record.holder
                    )
            elif (
                record.state in ENDED
                and record.ended_at is not None
                and now - record.ended_at > KEEP_FINISHED_S
            ):
                del self._records[record.id]

    def _pump_locked(self, now: float) -> list[ApiReservation]:
        admitted: list[ApiReservation] = []
        for gpu, queue in self._queues.items():
            ledger = self._ledgers.for_gpu(gpu)
            for rid in list(queue):
                record = self._records[rid]
                if record.wait_until is not None and now >= record.wait_until:
                    queue.remove(rid)
                    self._records[rid] = replace(
                        record,
                        state=ReservationState.TIMED_OUT,
                        ended_at=now,
                        available_bytes_at_end=ledger.available_bytes(),
                    )
                    ledger.count_failure("insufficient_vram")
                    logger.info(
                        "GPU %d: %s gave up waiting for %s", gpu, record.holder, format_bytes(record.nbytes)
                    )
            while queue:
                head = self._records[queue[0]]
                if ledger.unavailable_reason() is not None or ledger.available_bytes() < head.nbytes:
                    break  # checked first: a refused reserve() would count as an allocation failure
                try:
                    granted = ledger.reserve(head.nbytes, head.holder, ttl_s=head.ttl_s)
                except VramError:
                    break
                queue.pop(0)
                record = replace(head, state=ReservationState.GRANTED, ledger_id=granted.id, granted_at=now)
                self._records[record.id] = record
                admitted.append(record)
                logger.info(
                    "GPU %d: admitted %s for %s from the queue", gpu, format_bytes(head.nbytes), head.holder
                )
        return admitted
