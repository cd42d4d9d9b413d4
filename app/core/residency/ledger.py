"""Admission control: one ledger per GPU reserves bytes atomically before any allocation starts.

Available for admission = free VRAM in the last NVML sample - headroom - outstanding reservations, where
headroom = max(reserved_system_vram, headroom_percent of total) (DESIGN.md, "Admission and headroom").
`reserve()` checks and records under one lock, so two loads racing for the same bytes cannot both pass
(the study's scenario S3): exactly the ones that fit are admitted, the others get `InsufficientVram`.

The lag rule. NVML only shows an allocation in `free_bytes` once it has happened, and the ledger only sees
NVML through periodic samples. So a reservation leaves the ledger in one of these ways:
- `release()`: the allocation failed, was cancelled, or its memory was freed (it never shows, or no longer
  needs to be counted);
- a sample taken *strictly after* `mark_allocated()`: from then on `free_bytes` contains the bytes, so
  counting the reservation as well would count them twice. A sample taken before or at the same clock
  reading may predate the allocation, so the reservation stays counted;
- its holder process died (the driver freed whatever it had), or its TTL ran out before it was allocated.
Hence the same bytes are never admitted twice while NVML lags: between the allocation and the first
sample that shows it, the bytes are still counted as a reservation.

Two requirements on the caller follow. `sampled_at` must be read from the same clock as the ledger's
`clock`, *before* the NVML query starts (a query that started earlier cannot show a later allocation).
Samples arriving out of order are ignored: an older view than the one already seen could miss
allocations whose reservations were already dropped.

Being conservative: a pending reservation whose holder has already allocated part of it counts those
bytes twice (once in NVML, once here) until `mark_allocated()` and the next sample; that only refuses early.

TTL applies only to reservations not yet allocated (a client of the API that reserved and never came back).
Once `mark_allocated()` is called, only a sample, `release()` or the holder's death removes it: dropping it
on a timer could admit its bytes a second time before NVML shows them.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from app.core.errors import GpuUnavailable, InsufficientVram, InvalidInput, VramError
from app.core.gpu.snapshot import BackendState, GpuState, TelemetrySnapshot
from app.core.units import format_bytes

logger = logging.getLogger(__name__)

# How long a refused client should wait before retrying (the `retry_after` of the problem JSON).
RETRY_AFTER_OUTSTANDING_S = 5.0  # it would fit once loads in flight finish or fail
RETRY_AFTER_FOREIGN_S = 30.0  # other applications must free memory first


@dataclass(frozen=True)
class Reservation:
    """Bytes admitted on one GPU for one holder, counted until NVML shows them (or they are released)."""

    id: str
    gpu: int
    nbytes: int
    holder: str  # who asked: a model name, or an API client's name
    pid: int | None  # the process that will hold the memory; its death expires the reservation
    created_at: float  # ledger clock
    expires_at: float | None  # ledger clock; None: no TTL
    allocated_at: float | None  # ledger clock; None while the allocation is still pending


class Ledger:
    """Admission control for one GPU. Thread-safe: every state change happens under one lock."""

    def __init__(
        self,
        gpu: int,
        *,
        headroom_bytes: Callable[[int], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gpu = gpu
        self._headroom_for = headroom_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._reservations: dict[str, Reservation] = {}
        self._total_bytes: int | None = None
        self._free_bytes: int | None = None
        self._headroom_bytes: int | None = None
        self._sampled_at: float | None = None
        self._unavailable_reason: str | None = None
        self._failures: dict[str, int] = {}
        self._concurrent_attempts = 0
        self._outstanding_bytes = 0  # sum of nbytes over _reservations, kept as they come and go
        self._expiries: list[tuple[float, str]] = []  # (expires_at, id) heap; stale entries skipped
        self._removal_sinks: list[Callable[[str], None]] = []

    def on_removed(self, sink: Callable[[str], None]) -> None:
        """Call `sink(reservation_id)` whenever a reservation leaves this ledger (released, expired, shown
        by a sample, its process exited), so a caller with its own records (the API's reservation book)
        learns of it without scanning. Called with the ledger's lock held: `sink` must only record the id
        (append to a deque), never call back into the ledger."""
        with self._lock:
            self._removal_sinks.append(sink)

    def set_headroom(self, headroom_bytes: Callable[[int], int]) -> None:
        """A new headroom rule (settings changed): applies at once to what is known, and to every sample."""
        with self._lock:
            self._headroom_for = headroom_bytes
            if self._total_bytes is not None:
                self._headroom_bytes = headroom_bytes(self._total_bytes)

    # --- samples ------------------------------------------------------------------------------------

    def observe(
        self,
        *,
        total_bytes: int,
        free_bytes: int,
        sampled_at: float,
        live_pids: AbstractSet[int] | None = None,
    ) -> None:
        """Take one NVML sample. `sampled_at`: the ledger clock's reading just before the query started.

        Drops allocated reservations that the sample shows (allocated strictly before `sampled_at`),
        reservations whose process is not in `live_pids` (when given: every live process, not only those
        on the GPU, since a holder that has not allocated yet is not on the GPU) and pending ones past TTL.
        """
        if total_bytes <= 0 or not 0 <= free_bytes <= total_bytes:
            raise InvalidInput(
                f"GPU {self.gpu} sample: expected total_bytes > 0 and 0 <= free_bytes <= total_bytes, "
                f"got total_bytes={total_bytes}, free_bytes={free_bytes}",
                field_name="free_bytes",
                value=free_bytes,
            )
        with self._lock:
            if self._sampled_at is not None and sampled_at < self._sampled_at:
                logger.debug(
                    "GPU %d: ignoring a sample taken at %.6f, older than the last one (%.6f)",
                    self.gpu,
                    sampled_at,
                    self._sampled_at,
                )
                return
            self._total_bytes = total_bytes
            self._free_bytes = free_bytes
            self._headroom_bytes = self._headroom_for(total_bytes)
            self._sampled_at = sampled_at
            if self._unavailable_reason is not None:
                logger.info("GPU %d is measurable again", self.gpu)
            self._unavailable_reason = None
            for reservation in list(self._reservations.values()):
                if reservation.allocated_at is not None and reservation.allocated_at < sampled_at:
                    self._remove_locked(reservation.id)
                    logger.debug(
                        "GPU %d: %s for %s is now resident in NVML's view",
                        self.gpu,
                        reservation.id,
                        reservation.holder,
                    )
                elif (
                    live_pids is not None and reservation.pid is not None and reservation.pid not in live_pids
                ):
                    self._remove_locked(reservation.id)
                    logger.info(
                        "GPU %d: released %s of %s: its process %d has exited",
                        self.gpu,
                        format_bytes(reservation.nbytes),
                        reservation.holder,
                        reservation.pid,
                    )
            self._expire_locked(self._clock())

    def mark_unavailable(self, reason: str) -> None:
        """The GPU cannot be measured (lost, or its queries fail): refuse admission until a good sample."""
        with self._lock:
            if self._unavailable_reason != reason:
                logger.warning("GPU %d: admission suspended: %s", self.gpu, reason)
            self._unavailable_reason = reason

    # --- admission ----------------------------------------------------------------------------------

    def reserve(
        self, nbytes: int, holder: str, *, pid: int | None = None, ttl_s: float | None = None
    ) -> Reservation:
        """Admit `nbytes` for `holder` atomically, or raise.

        Raises InvalidInput (size not a positive whole number of bytes, bad pid or TTL), GpuUnavailable
        (no sample yet, or the GPU is lost or failing) or InsufficientVram (it does not fit now).
        """
        with self._lock:
            now = self._clock()
            self._expire_locked(now)
            self._validate_locked(nbytes, pid, ttl_s)
            if self._reservations:
                self._concurrent_attempts += 1
            if self._unavailable_reason is not None:
                raise self._refuse(
                    GpuUnavailable(
                        reason=self._unavailable_reason,
                        gpu=self.gpu,
                        suggestion="Check the GPU with nvidia-smi; a lost GPU needs a reset or a reboot",
                    )
                )
            if self._free_bytes is None or self._total_bytes is None or self._headroom_bytes is None:
                raise self._refuse(
                    GpuUnavailable(
                        reason="no sample yet",
                        gpu=self.gpu,
                        suggestion="Retry in a moment: the first VRAM sample is taken right after start",
                    )
                )
            available = self._available_locked()
            if nbytes > available:
                raise self._refuse(self._insufficient_locked(nbytes, available, holder))
            reservation = Reservation(
                id=uuid.uuid4().hex,
                gpu=self.gpu,
                nbytes=nbytes,
                holder=holder,
                pid=pid,
                created_at=now,
                expires_at=None if ttl_s is None else now + ttl_s,
                allocated_at=None,
            )
            self._reservations[reservation.id] = reservation
            self._outstanding_bytes += nbytes
            if reservation.expires_at is not None:
                heapq.heappush(self._expiries, (reservation.expires_at, reservation.id))
                if len(self._expiries) > 2 * len(self._reservations) + 1024:  # many released early
                    self._expiries = [
                        (r.expires_at, r.id)
                        for r in self._reservations.values()
                        if r.expires_at is not None and r.allocated_at is None
                    ]
                    heapq.heapify(self._expiries)
            logger.debug(
                "GPU %d: reserved %s for %s (%s): %s left",
                self.gpu,
                format_bytes(nbytes),
                holder,
                reservation.id,
                format_bytes(max(available - nbytes, 0)),
            )
            return reservation

    def mark_allocated(self, reservation_id: str) -> None:
        """The allocation finished: keep counting it until a sample taken after this moment shows it."""
        with self._lock:
            reservation = self._reservations.get(reservation_id)
            if reservation is None:
                logger.warning(
                    "GPU %d: mark_allocated for unknown or expired reservation %s: its bytes are not "
                    "counted until the next sample shows them",
                    self.gpu,
                    reservation_id,
                )
                return
            if reservation.allocated_at is not None:
                return
            self._reservations[reservation_id] = dataclasses.replace(reservation, allocated_at=self._clock())

    def release(self, reservation_id: str) -> None:
        """The allocation failed, was cancelled or freed. Unknown ids are ignored (idempotent)."""
        with self._lock:
            if self._remove_locked(reservation_id) is not None:
                logger.debug("GPU %d: released %s", self.gpu, reservation_id)

    def expire_due(self) -> None:
        """Drop pending reservations whose TTL ran out now (every admission and view does it too)."""
        with self._lock:
            self._expire_locked(self._clock())

    def count_failure(self, reason: str) -> None:
        """Count a failure that happened after admission (e.g. "cuda_allocation_failed") for metrics."""
        with self._lock:
            self._failures[reason] = self._failures.get(reason, 0) + 1

    # --- views --------------------------------------------------------------------------------------

    def available_bytes(self) -> int:
        """Last free - headroom - outstanding; may be negative (reported as is). 0 before the first sample."""
        with self._lock:
            self._expire_locked(self._clock())
            return self._available_locked()

    def outstanding_bytes(self) -> int:
        with self._lock:
            self._expire_locked(self._clock())
            return self._outstanding_bytes

    def reservations(self) -> tuple[Reservation, ...]:
        with self._lock:
            self._expire_locked(self._clock())
            return tuple(self._reservations.values())

    def get(self, reservation_id: str) -> Reservation | None:
        with self._lock:
            self._expire_locked(self._clock())
            return self._reservations.get(reservation_id)

    def total_bytes(self) -> int | None:
        with self._lock:
            return self._total_bytes

    def headroom(self) -> int | None:
        with self._lock:
            return self._headroom_bytes

    def last_sample_at(self) -> float | None:
        with self._lock:
            return self._sampled_at

    def unavailable_reason(self) -> str | None:
        with self._lock:
            return self._unavailable_reason

    @property
    def allocation_failures_total(self) -> dict[str, int]:
        """Refused or failed allocations by reason (the error's code): `vram_allocation_failures_total`."""
        with self._lock:
            return dict(self._failures)

    @property
    def concurrent_allocation_attempts_total(self) -> int:
        """Valid reserve attempts that arrived while another reservation on this GPU was outstanding."""
        with self._lock:
            return self._concurrent_attempts

    # --- internals (call with the lock held) --------------------------------------------------------

    def _available_locked(self) -> int:
        return (self._free_bytes or 0) - (self._headroom_bytes or 0) - self._outstanding_bytes

    def _remove_locked(self, reservation_id: str) -> Reservation | None:
        """Forget one reservation (every removal goes through here: the sum and the sinks stay right)."""
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:
            return None
        self._outstanding_bytes -= reservation.nbytes
        for sink in self._removal_sinks:
            sink(reservation_id)
        return reservation

    def _expire_locked(self, now: float) -> None:
        """Drop pending reservations past their TTL: O(log n) per expiry, not a scan of every reservation
        (this runs at every admission, and the API may hold thousands)."""
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires_at, reservation_id = heapq.heappop(heap)
            reservation = self._reservations.get(reservation_id)
            if (
                reservation is not None
                and reservation.allocated_at is None
                and reservation.expires_at == expires_at
            ):
                self._remove_locked(reservation_id)
                logger.info(
                    "GPU %d: reservation of %s for %s expired before it was allocated",
                    self.gpu,
                    format_bytes(reservation.nbytes),
                    reservation.holder,
                )

    def _validate_locked(self, nbytes: int, pid: int | None, ttl_s: float | None) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise self._refuse(
                InvalidInput(
                    f"reservation size on GPU {self.gpu}: expected whole bytes > 0, got {nbytes!r}",
                    field_name="nbytes",
                    value=nbytes,
                )
            )
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise self._refuse(
                InvalidInput(
                    f"reservation pid: expected a process id > 0, got {pid!r}", field_name="pid", value=pid
                )
            )
        if ttl_s is not None and (
            isinstance(ttl_s, bool)
            or not isinstance(ttl_s, (int, float))
            or not math.isfinite(ttl_s)
            or ttl_s <= 0
        ):
            raise self._refuse(
                InvalidInput(
                    f"reservation ttl_s: expected seconds > 0 or none, got {ttl_s!r}",
                    field_name="ttl_s",
                    value=ttl_s,
                )
            )

    def _insufficient_locked(self, nbytes: int, available: int, holder: str) -> InsufficientVram:
        assert (
            self._total_bytes is not None
            and self._headroom_bytes is not None
            and self._free_bytes is not None
        )
        ceiling = self._total_bytes - self._headroom_bytes
        if nbytes > ceiling:
            return InsufficientVram(
                gpu=self.gpu,
                needed_bytes=nbytes,
                available_bytes=available,
                holder=holder,
                retry_after_s=None,
                suggestions=[
                    f"GPU {self.gpu} can admit at most {format_bytes(ceiling)} even when empty "
                    f"({format_bytes(self._total_bytes)} total minus {format_bytes(self._headroom_bytes)} "
                    "headroom): load a smaller model or a more quantized variant",
                    "Lower reserved_system_vram / headroom_percent if your desktop needs less",
                ],
            )
        fits_without_reservations = nbytes <= self._free_bytes - self._headroom_bytes
        return InsufficientVram(
            gpu=self.gpu,
            needed_bytes=nbytes,
            available_bytes=available,
            holder=holder,
            retry_after_s=RETRY_AFTER_OUTSTANDING_S if fits_without_reservations else RETRY_AFTER_FOREIGN_S,
        )

    def _refuse(self, error: VramError) -> VramError:
        self._failures[error.code] = self._failures.get(error.code, 0) + 1
        return error


class Ledgers(Mapping[int, Ledger]):
    """The ledgers of every GPU, by index. `for_gpu()` creates one on demand; thread-safe."""

    def __init__(
        self, headroom_bytes: Callable[[int], int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._headroom_bytes = headroom_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._ledgers: dict[int, Ledger] = {}

    def set_headroom(self, headroom_bytes: Callable[[int], int]) -> None:
        """Settings changed: every ledger uses the new headroom from its next observation, which the engine
        makes in the same tick."""
        with self._lock:
            self._headroom_bytes = headroom_bytes
            for ledger in self._ledgers.values():
                ledger.set_headroom(headroom_bytes)

    def for_gpu(self, gpu: int) -> Ledger:
        with self._lock:
            ledger = self._ledgers.get(gpu)
            if ledger is None:
                ledger = Ledger(gpu, headroom_bytes=self._headroom_bytes, clock=self._clock)
                self._ledgers[gpu] = ledger
            return ledger

    def observe_snapshot(
        self, snapshot: TelemetrySnapshot, live_pids: AbstractSet[int] | None = None
    ) -> None:
        """Feed every GPU of one telemetry sample. A GPU that is lost or failing, or a backend that fails
        as a whole, suspends admission there until a good sample arrives."""
        if snapshot.state not in (BackendState.OK, BackendState.SIMULATED):
            reason = snapshot.message or f"GPU telemetry is unavailable ({snapshot.state})"
            for ledger in self.values():
                ledger.mark_unavailable(reason)
            return
        for gpu in snapshot.gpus:
            ledger = self.for_gpu(gpu.index)
            if gpu.state != GpuState.OK:
                ledger.mark_unavailable(gpu.message or f"GPU {gpu.index} is {gpu.state}")
                continue
            ledger.observe(
                total_bytes=gpu.total_bytes,
                free_bytes=gpu.free_bytes,
                sampled_at=snapshot.taken_at,
                live_pids=live_pids,
            )

    def find(self, reservation_id: str) -> Reservation | None:
        """The reservation with this id on any GPU (ids are unique across GPUs)."""
        for ledger in self.values():
            reservation = ledger.get(reservation_id)
            if reservation is not None:
                return reservation
        return None

    @property
    def allocation_failures_total(self) -> dict[str, int]:
        """Summed over GPUs, by reason."""
        totals: dict[str, int] = {}
        for ledger in self.values():
            for reason, count in ledger.allocation_failures_total.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals

    @property
    def concurrent_allocation_attempts_total(self) -> int:
        return sum(ledger.concurrent_allocation_attempts_total for ledger in self.values())

    def __getitem__(self, gpu: int) -> Ledger:
        with self._lock:
            return self._ledgers[gpu]

    def __iter__(self) -> Iterator[int]:
        with self._lock:
            return iter(sorted(self._ledgers))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ledgers)
