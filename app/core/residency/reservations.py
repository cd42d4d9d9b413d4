"""Reservations that other processes take through the API before they allocate VRAM (the study's
orchestrator-level admission control).

They go into the same per-GPU ledger as our own loads, so they count in admission exactly like them. A
request that does not fit either fails at once (`insufficient_vram`) or, when it asks to wait (`wait_s`),
joins a first-in first-out queue for its GPU: the head of the queue is admitted as soon as it fits, and
nothing behind it jumps ahead. A reservation ends when its client releases it, when its TTL runs out before
the client said it allocated (the ledger drops it), or, once marked allocated, when a sample shows the bytes.

`ReservationBook` holds no engine state and never waits: the API calls `pump()` when VRAM may have come free
(after every engine tick, after a release) and does the waiting itself. Thread-safe (one lock).

It runs on the API's event loop, so no operation scans every reservation: the ledger reports each reservation
that leaves it (`Ledger.on_removed`), ended records are kept in the order they ended and forgotten from the
front, and the queues are short (MAX_WAITING_PER_GPU). At most `max_outstanding` reservations (waiting,
granted or allocated) exist at once; one more is refused with `too_many_reservations` (429).

Per client, too: a client (`ReservationRequest.client`, set by the API from who is calling: the peer's pid on
the Unix socket, its address on TCP, plus the optional `client` name of the body) keeps at most
`max_per_client` outstanding and `max_waiting_per_client` waiting, so one client that never releases cannot
take the whole book (429 `too_many_reservations_for_client`). A client that names itself differently on
every request escapes its own cap, not the global ones.
"""

from __future__ import annotations

import collections
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
from app.core.residency.ledger import RETRY_AFTER_FOREIGN_S, RETRY_AFTER_OUTSTANDING_S, Ledger, Ledgers
from app.core.units import format_bytes

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 300.0
MAX_TTL_S = 86_400.0
MAX_WAIT_S = 3_600.0
MAX_HOLDER_CHARS = 200
MAX_WAITING_PER_GPU = 256
KEEP_FINISHED_S = 600.0  # how long an ended reservation can still be looked up by id
MAX_RECORDS = 10_000
MAX_OUTSTANDING = 4_096  # waiting, granted and allocated API reservations at once, over all GPUs and clients
MAX_BYTES = 2**63 - 1  # what NVML can express; anything larger is a bad request, not a refusal
MAX_GPU_INDEX = 1_023
MAX_PER_CLIENT = 1_024  # outstanding (waiting, granted, allocated) for one client: a quarter of the book
MAX_WAITING_PER_CLIENT = 64  # waiting in the queues, over all GPUs, for one client
MAX_CLIENT_CHARS = 200


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


class TooManyReservations(VramError):
    """The book holds `max_outstanding` reservations already: a client that never releases (or a flood)."""

    code = "too_many_reservations"
    retriable = True
    http_status = 429

    def __init__(self, outstanding: int) -> None:
        super().__init__(
            f"{outstanding} reservations are outstanding already (the most this engine keeps at once)",
            details={"outstanding": outstanding, "max_outstanding": outstanding},
            suggestions=[
                "Release reservations you no longer need (DELETE /v1/reservations/{id}), or mark them "
                "allocated; ones not allocated expire after their ttl_s",
                "Retry later",
            ],
            retry_after_s=RETRY_AFTER_OUTSTANDING_S,
        )


class TooManyForClient(VramError):
    """One client holds (or waits for) as many reservations as one client may."""

    code = "too_many_reservations_for_client"
    retriable = True
    http_status = 429

    def __init__(self, client: str, count: int, limit: int, *, waiting: bool) -> None:
        what = "waiting in the queues" if waiting else "outstanding"
        super().__init__(
            f"client {client} has {count} reservations {what}, the most one client may have",
            details={"client": client, what.split()[0]: count, "limit": limit},
            suggestions=[
                "Release reservations you no longer need (DELETE /v1/reservations/{id}), or mark them "
                "allocated; ones not allocated expire after their ttl_s",
                "Retry later",
            ],
            retry_after_s=RETRY_AFTER_OUTSTANDING_S,
        )


@dataclass(frozen=True)
class ReservationRequest:
    """A validated `POST /v1/reservations` body."""

    gpu: int
    nbytes: int
    holder: str
    ttl_s: float
    wait_s: float  # 0: answer at once
    client: str = ""  # who asks (the body's optional `client`; the API puts the peer in front)


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
    client: str = ""

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
            "client": self.client,
        }


def parse_reservation_request(
    body: Mapping[str, Any], total_bytes_by_gpu: Mapping[int, int | None]
) -> ReservationRequest:
    """Validate a request body. `total_bytes_by_gpu`: the GPUs that exist now and their sizes (None: not
    measurable now; the ledger then refuses with gpu_unavailable).

    Raises InvalidInput naming the field, the value and what was expected: a size that could never fit on
    the GPU (over its total) is a bad request, not a retriable refusal.
    """
    allowed = {"gpu", "bytes", "holder", "ttl_s", "wait_s", "client"}
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
    if not _is_int(gpu) or gpu < 0 or gpu > MAX_GPU_INDEX:
        raise InvalidInput(
            f"gpu: expected a GPU index (whole number from 0 to {MAX_GPU_INDEX}), got {_short(gpu)}",
            field_name="gpu",
            value=_short(gpu),
        )
    if gpu not in total_bytes_by_gpu:
        known = ", ".join(str(g) for g in sorted(total_bytes_by_gpu)) or "none"
        raise InvalidInput(f"gpu: unknown GPU {gpu}; known: {known}", field_name="gpu", value=gpu)
    nbytes = body["bytes"]
    if not _is_int(nbytes) or not 0 < nbytes <= MAX_BYTES:
        raise InvalidInput(
            f"bytes: expected whole bytes from 1 to {MAX_BYTES}, got {_short(nbytes)}",
            field_name="bytes",
            value=_short(nbytes),
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
    client = body.get("client")
    if client is not None and (
        not isinstance(client, str)
        or not client.strip()
        or len(client) > MAX_CLIENT_CHARS
        or not client.isprintable()
    ):
        raise InvalidInput(
            f"client: expected a printable name of 1 to {MAX_CLIENT_CHARS} characters, got {_short(client)}",
            field_name="client",
            value=_short(client),
        )
    return ReservationRequest(
        gpu=gpu, nbytes=nbytes, holder=holder, ttl_s=ttl_s, wait_s=wait_s, client=client or ""
    )


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


def _short(value: object) -> str:
    """A bad value as shown back in a problem: a number thousands of digits long is named by its size."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"a whole number of {len(str(value))} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _seconds(
    body: Mapping[str, Any], name: str, default: float, *, minimum_exclusive: float | None, maximum: float
) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and -1e300 < value < 1e300 and math.isfinite(value)  # a huge int would overflow isfinite()
    if ok and minimum_exclusive is not None and value <= minimum_exclusive:
        ok = False
    if ok and (value < 0 or value > maximum):
        ok = False
    if not ok:
        low = f"> {minimum_exclusive:g}" if minimum_exclusive is not None else ">= 0"
        raise InvalidInput(
            f"{name}: expected seconds {low} and <= {maximum:g}, got {_short(value)}",
            field_name=name,
            value=_short(value),
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
        max_outstanding: int = MAX_OUTSTANDING,
        max_per_client: int = MAX_PER_CLIENT,
        max_waiting_per_client: int = MAX_WAITING_PER_CLIENT,
    ) -> None:
        self._ledgers = ledgers
        self._clock = clock
        self._max_waiting = max_waiting_per_gpu
        self._max_outstanding = max_outstanding
        self._max_per_client = max_per_client
        self._max_waiting_per_client = max_waiting_per_client
        self._open_by_client: collections.Counter[str] = collections.Counter()
        self._waiting_by_client: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._records: dict[str, ApiReservation] = {}
        self._queues: dict[int, list[str]] = {}
        self._open: dict[str, None] = {}  # waiting, granted and allocated ids, oldest first
        self._ended: dict[str, float] = {}  # ended ids -> when, in the order they ended
        self._by_ledger_id: dict[str, str] = {}  # granted and allocated: ledger id -> record id
        self._watched: set[int] = set()  # GPUs whose ledger reports removals to _removed
        self._removed: collections.deque[str] = collections.deque()  # ledger ids, from Ledger.on_removed

    # --- requests ------------------------------------------------------------------------------------

    def request(self, req: ReservationRequest) -> ApiReservation:
        """Admit now (state granted), queue (state waiting, when `req.wait_s` > 0) or raise.

        Raises InsufficientVram (does not fit, or others wait ahead and the caller would not wait),
        GpuUnavailable (the ledger cannot measure the GPU) or QueueFull.
        """
        with self._lock:
            now = self._clock()
            ledger = self._ledger_locked(req.gpu)
            self._refresh_locked(now)
            if len(self._open) >= self._max_outstanding:
                raise TooManyReservations(len(self._open))
            mine = self._open_by_client[req.client]
            if mine >= self._max_per_client:
                raise TooManyForClient(req.client, mine, self._max_per_client, waiting=False)
            queue = self._queues.setdefault(req.gpu, [])
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
                        client=req.client,
                    )
                    self._store_locked(record)
                    return record
            if req.wait_s <= 0:
                raise self._queued_ahead_locked(req, len(queue))
            if len(queue) >= self._max_waiting:
                raise QueueFull(req.gpu, len(queue))
            waiting = self._waiting_by_client[req.client]
            if waiting >= self._max_waiting_per_client:
                raise TooManyForClient(req.client, waiting, self._max_waiting_per_client, waiting=True)
            record = ApiReservation(
                id=uuid.uuid4().hex,
                gpu=req.gpu,
                nbytes=req.nbytes,
                holder=req.holder,
                ttl_s=req.ttl_s,
                state=ReservationState.WAITING,
                created_at=now,
                wait_until=now + req.wait_s,
                client=req.client,
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
                self._store_locked(record)
            elif record.state in (ReservationState.GRANTED, ReservationState.ALLOCATED):
                assert record.ledger_id is not None
                self._ledgers.for_gpu(record.gpu).release(record.ledger_id)
                record = replace(record, state=ReservationState.RELEASED, ended_at=now)
                self._store_locked(record)
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
            self._store_locked(record)
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
            records = [self._records[rid] for rid in self._open]
            return [r.to_json(now, self._position_locked(r)) for r in records]

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

    def _ledger_locked(self, gpu: int) -> Ledger:
        """The GPU's ledger, reporting its removals to this book from the first use on."""
        ledger = self._ledgers.for_gpu(gpu)
        if gpu not in self._watched:
            ledger.on_removed(self._removed.append)
            self._watched.add(gpu)
        return ledger

    def _store_locked(self, record: ApiReservation) -> None:
        """Record a new or changed reservation; keeps the open, ended, ledger-id and per-client indexes in
        step."""
        old = self._records.get(record.id)
        was_waiting = old is not None and old.state == ReservationState.WAITING
        if was_waiting != (record.state == ReservationState.WAITING):
            self._count_locked(self._waiting_by_client, record.client, -1 if was_waiting else 1)
        self._records[record.id] = record
        if record.state in ENDED:
            if self._open.pop(record.id, 0) is None:  # it was open: one fewer for its client
                self._count_locked(self._open_by_client, record.client, -1)
            if record.ledger_id is not None:
                self._by_ledger_id.pop(record.ledger_id, None)
            self._ended[record.id] = record.ended_at if record.ended_at is not None else self._clock()
            while len(self._records) > MAX_RECORDS and self._ended:
                oldest = next(iter(self._ended))
                del self._ended[oldest]
                del self._records[oldest]
            return
        if record.id not in self._open:
            self._open[record.id] = None
            self._open_by_client[record.client] += 1
        if record.ledger_id is not None:
            self._by_ledger_id[record.ledger_id] = record.id

    @staticmethod
    def _count_locked(counter: collections.Counter[str], client: str, delta: int) -> None:
        counter[client] += delta
        if counter[client] <= 0:
            del counter[client]  # forgotten clients cost nothing

    def _refresh_locked(self, now: float) -> None:
        """Apply what happened since the last look: queue timeouts and admissions, reservations the ledger
        dropped (TTL ran out: expired; a sample shows the bytes: settled), old ended records forgotten.
        Costs what changed, not what is outstanding."""
        self._pump_locked(now)
        for gpu in self._watched:
            self._ledgers.for_gpu(gpu).expire_due()
        while self._removed:
            record_id = self._by_ledger_id.pop(self._removed.popleft(), None)
            record = self._records.get(record_id) if record_id is not None else None
            if record is None:
                continue  # released through the book, or not an API reservation
            if record.state == ReservationState.ALLOCATED:
                self._store_locked(replace(record, state=ReservationState.SETTLED, ended_at=now))
            elif record.state == ReservationState.GRANTED:
                self._store_locked(replace(record, state=ReservationState.EXPIRED, ended_at=now))
                logger.info("GPU %d: API reservation %s of %s expired", record.gpu, record.id, record.holder)
        while self._ended:
            oldest, ended_at = next(iter(self._ended.items()))
            if now - ended_at <= KEEP_FINISHED_S:
                break
            del self._ended[oldest]
            self._records.pop(oldest, None)

    def _pump_locked(self, now: float) -> list[ApiReservation]:
        admitted: list[ApiReservation] = []
        for gpu, queue in self._queues.items():
            ledger = self._ledgers.for_gpu(gpu)
            for rid in list(queue):
                record = self._records[rid]
                if record.wait_until is not None and now >= record.wait_until:
                    queue.remove(rid)
                    self._store_locked(
                        replace(
                            record,
                            state=ReservationState.TIMED_OUT,
                            ended_at=now,
                            available_bytes_at_end=ledger.available_bytes(),
                        )
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
                self._store_locked(record)
                admitted.append(record)
                logger.info(
                    "GPU %d: admitted %s for %s from the queue", gpu, format_bytes(head.nbytes), head.holder
                )
        return admitted
