"""The admission ledger: the study's race (S3), headroom, the NVML lag rule, expiry, and the registry."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from app.core.config import Settings
from app.core.errors import GpuUnavailable, InsufficientVram, InvalidInput
from app.core.gpu.simulated import ManualClock
from app.core.gpu.snapshot import BackendState, GpuSnapshot, GpuState, TelemetrySnapshot
from app.core.residency.ledger import (
    RETRY_AFTER_FOREIGN_S,
    RETRY_AFTER_OUTSTANDING_S,
    Ledger,
    Ledgers,
    Reservation,
)
from app.core.units import GiB, MiB

HEADROOM = Settings().headroom_bytes  # max(2 GiB, 10 % of total): the real policy


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


def ledger_with(
    clock: Callable[[], float], *, total: int = 16 * GiB, free: int = 14 * GiB, at: float | None = None
) -> Ledger:
    ledger = Ledger(0, headroom_bytes=HEADROOM, clock=clock)
    ledger.observe(total_bytes=total, free_bytes=free, sampled_at=clock() if at is None else at)
    return ledger


# --- S3: the race -----------------------------------------------------------------------------------


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can, so a check-then-allocate race would show."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def yielding_clock() -> float:
    time.sleep(0)  # gives other threads the GIL in the middle of reserve()
    return time.monotonic()


def race(ledger: Ledger, nbytes: int, threads: int) -> tuple[list[Reservation], list[InsufficientVram]]:
    """`threads` threads released together by a barrier, each reserving `nbytes`."""
    barrier = threading.Barrier(threads)
    admitted: list[Reservation] = []
    refused: list[InsufficientVram] = []
    results_lock = threading.Lock()

    def load(i: int) -> None:
        barrier.wait()
        try:
            reservation = ledger.reserve(nbytes, f"model-{i}")
        except InsufficientVram as exc:
            with results_lock:
                refused.append(exc)
        else:
            with results_lock:
                admitted.append(reservation)

    workers = [threading.Thread(target=load, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    return admitted, refused


@pytest.mark.usefixtures("frequent_thread_switches")
def test_ten_threads_racing_for_2_gib_each_admit_exactly_six_of_12_gib() -> None:
    for round_number in range(150):
        # 16 GiB total: headroom = max(2 GiB, 1.6 GiB) = 2 GiB; 14 GiB free -> 12 GiB admissible.
        ledger = Ledger(0, headroom_bytes=HEADROOM, clock=yielding_clock)
        ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=time.monotonic())
        assert ledger.available_bytes() == 12 * GiB
        admitted, refused = race(ledger, 2 * GiB, threads=10)
        assert len(admitted) == 6, f"round {round_number}: {len(admitted)} admitted"
        assert len(refused) == 4  # and no thread died of anything else
        assert len({r.id for r in admitted}) == 6
        assert ledger.outstanding_bytes() == 12 * GiB
        assert ledger.available_bytes() == 0
        for exc in refused:
            assert exc.needed_bytes == 2 * GiB
            assert exc.available_bytes == 0
            assert exc.retriable
            assert exc.gpu == 0
            problem = exc.to_problem()
            assert problem["error"] == "insufficient_vram"
            assert problem["need_bytes"] == 2 * GiB
            assert problem["available_bytes"] == 0
        # every attempt but the very first arrived while another reservation was outstanding
        assert ledger.concurrent_allocation_attempts_total == 9
        assert ledger.allocation_failures_total == {"insufficient_vram": 4}


def test_s3_six_and_eight_gib_race_on_twelve_admits_exactly_one() -> None:
    clock = ManualClock(1000.0)
    ledger = ledger_with(clock, total=16 * GiB, free=14 * GiB)  # 12 GiB admissible
    barrier = threading.Barrier(2)
    outcomes: dict[int, object] = {}

    def load(nbytes: int) -> None:
        barrier.wait()
        try:
            outcomes[nbytes] = ledger.reserve(nbytes, f"{nbytes // GiB} GiB model")
        except InsufficientVram as exc:
            outcomes[nbytes] = exc

    threads = [threading.Thread(target=load, args=(n,)) for n in (6 * GiB, 8 * GiB)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    winners = [o for o in outcomes.values() if isinstance(o, Reservation)]
    losers = [o for o in outcomes.values() if isinstance(o, InsufficientVram)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].available_bytes == 12 * GiB - winners[0].nbytes
    # it would fit once the other load finishes or fails: a short retry
    assert losers[0].retry_after_s == RETRY_AFTER_OUTSTANDING_S


# --- headroom -----------------------------------------------------------------------------------------


def test_headroom_floor_of_2_gib_applies_on_a_small_gpu(clock: ManualClock) -> None:
    ledger = ledger_with(clock, total=8 * GiB, free=8 * GiB)  # 10 % = 0.8 GiB < 2 GiB
    assert ledger.headroom() == 2 * GiB
    assert ledger.available_bytes() == 6 * GiB
    with pytest.raises(InsufficientVram) as info:
        ledger.reserve(6 * GiB + 1, "too big")
    assert info.value.available_bytes == 6 * GiB
    ledger.reserve(6 * GiB, "fits exactly")
    assert ledger.available_bytes() == 0


def test_headroom_of_10_percent_applies_on_a_large_gpu(clock: ManualClock) -> None:
    ledger = ledger_with(clock, total=80 * GiB, free=80 * GiB)  # 10 % = 8 GiB > 2 GiB
    assert ledger.headroom() == 8 * GiB
    assert ledger.available_bytes() == 72 * GiB
    with pytest.raises(InsufficientVram):
        ledger.reserve(72 * GiB + 1, "too big")
    ledger.reserve(72 * GiB, "fits exactly")


def test_headroom_follows_the_settings_given(clock: ManualClock) -> None:
    settings = Settings(reserved_system_vram=512 * MiB, headroom_percent=25.0)
    ledger = Ledger(3, headroom_bytes=settings.headroom_bytes, clock=clock)
    ledger.observe(total_bytes=4 * GiB, free_bytes=3 * GiB, sampled_at=clock())
    assert ledger.headroom() == 1 * GiB
    assert ledger.total_bytes() == 4 * GiB
    assert ledger.available_bytes() == 2 * GiB


def test_a_request_larger_than_the_gpu_can_ever_admit_says_so(clock: ManualClock) -> None:
    ledger = ledger_with(clock, total=12 * GiB, free=12 * GiB)
    with pytest.raises(InsufficientVram) as info:
        ledger.reserve(11 * GiB, "huge")
    assert info.value.retry_after_s is None  # waiting cannot help
    assert "at most 10.0 GiB" in info.value.user_message() or "at most 10 GiB" in info.value.user_message()


def test_a_request_blocked_by_other_applications_gets_the_long_retry(clock: ManualClock) -> None:
    ledger = ledger_with(clock, total=12 * GiB, free=2 * GiB)  # S1: a user app holds 10 of 12 GiB
    with pytest.raises(InsufficientVram) as info:
        ledger.reserve(8 * GiB, "llama")
    assert info.value.available_bytes == 0
    assert info.value.needed_bytes == 8 * GiB
    assert info.value.retry_after_s == RETRY_AFTER_FOREIGN_S
    assert "llama" in str(info.value)


def test_available_may_be_negative_when_others_ate_into_the_headroom(clock: ManualClock) -> None:
    ledger = ledger_with(clock, total=16 * GiB, free=1 * GiB)
    assert ledger.available_bytes() == -1 * GiB
    with pytest.raises(InsufficientVram) as info:
        ledger.reserve(1, "tiny")
    assert info.value.available_bytes == -1 * GiB


# --- the lag rule -------------------------------------------------------------------------------------


def test_an_allocation_stays_counted_until_a_sample_taken_after_it_shows_it(clock: ManualClock) -> None:
    ledger = ledger_with(clock, total=16 * GiB, free=14 * GiB)
    sample_before = clock()
    clock.advance(0.01)
    reservation = ledger.reserve(4 * GiB, "llama")
    clock.advance(0.5)
    ledger.mark_allocated(reservation.id)
    allocated_at = clock()
    got = ledger.get(reservation.id)
    assert got is not None and got.allocated_at == allocated_at

    # NVML lags: a sample taken before the allocation finished arrives now, free unchanged
    ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=sample_before + 0.4)
    assert ledger.outstanding_bytes() == 4 * GiB
    assert ledger.available_bytes() == 8 * GiB
    # a sample at the very clock reading of the allocation may predate it: still counted
    ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=allocated_at)
    assert ledger.get(reservation.id) is not None
    assert ledger.available_bytes() == 8 * GiB
    with pytest.raises(InsufficientVram):
        ledger.reserve(8 * GiB + 1, "second")  # the same bytes are not admitted twice

    # a sample taken after the allocation shows the bytes in free: the reservation is dropped
    clock.advance(0.1)
    ledger.observe(total_bytes=16 * GiB, free_bytes=10 * GiB, sampled_at=clock())
    assert ledger.get(reservation.id) is None
    assert ledger.outstanding_bytes() == 0
    assert ledger.available_bytes() == 8 * GiB
    assert ledger.last_sample_at() == clock()


def test_a_pending_reservation_is_never_dropped_by_a_sample(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    reservation = ledger.reserve(3 * GiB, "loading")
    for _ in range(5):
        clock.advance(1.0)
        ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=clock())
    assert ledger.get(reservation.id) == reservation
    assert ledger.available_bytes() == 9 * GiB


def test_a_sample_older_than_the_last_one_is_ignored(clock: ManualClock) -> None:
    ledger = ledger_with(clock, free=14 * GiB)
    clock.advance(1.0)
    reservation = ledger.reserve(4 * GiB, "llama")
    clock.advance(1.0)
    ledger.mark_allocated(reservation.id)
    clock.advance(1.0)
    ledger.observe(total_bytes=16 * GiB, free_bytes=10 * GiB, sampled_at=clock())  # shows the 4 GiB
    assert ledger.outstanding_bytes() == 0
    # a late sample from before the allocation must not bring the 4 GiB back into "free"
    ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=clock() - 2.5)
    assert ledger.available_bytes() == 8 * GiB
    assert ledger.last_sample_at() == clock()


def test_mark_allocated_twice_keeps_the_first_time_and_unknown_ids_are_harmless(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    reservation = ledger.reserve(1 * GiB, "m")
    ledger.mark_allocated(reservation.id)
    first = clock()
    clock.advance(5.0)
    ledger.mark_allocated(reservation.id)
    got = ledger.get(reservation.id)
    assert got is not None and got.allocated_at == first
    ledger.mark_allocated("no-such-id")
    assert ledger.outstanding_bytes() == 1 * GiB


# --- expiry and release -------------------------------------------------------------------------------


def test_a_reservation_expires_when_its_process_dies(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    doomed = ledger.reserve(2 * GiB, "client A", pid=4242)
    allocated_doomed = ledger.reserve(1 * GiB, "client B", pid=4243)
    ledger.mark_allocated(allocated_doomed.id)
    survivor = ledger.reserve(3 * GiB, "client C", pid=4244)
    ours = ledger.reserve(1 * GiB, "builtin")  # no pid: never expires this way
    clock.advance(1.0)
    ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=clock() - 1.0, live_pids=None)
    assert ledger.outstanding_bytes() == 7 * GiB  # no pid list: nothing expires
    # the sample predates the allocation of client B, so only its process's death can drop it
    ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=clock() - 0.5, live_pids={1, 4244})
    assert ledger.get(doomed.id) is None
    assert ledger.get(allocated_doomed.id) is None
    assert ledger.get(survivor.id) is not None
    assert ledger.get(ours.id) is not None
    assert ledger.outstanding_bytes() == 4 * GiB


def test_a_pending_reservation_expires_after_its_ttl(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    reservation = ledger.reserve(5 * GiB, "api client", ttl_s=30.0)
    assert reservation.expires_at == clock() + 30.0
    clock.advance(29.999)
    assert ledger.available_bytes() == 7 * GiB
    clock.advance(0.001)
    assert ledger.get(reservation.id) is None  # expired without waiting for a sample
    assert ledger.available_bytes() == 12 * GiB
    ledger.reserve(12 * GiB, "next")  # its bytes are admissible again


def test_ttl_expiry_is_also_applied_by_a_sample(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    reservation = ledger.reserve(5 * GiB, "api client", ttl_s=1.0)
    clock.advance(2.0)
    ledger.observe(total_bytes=16 * GiB, free_bytes=14 * GiB, sampled_at=clock() - 1.5)
    assert ledger.last_sample_at() == clock() - 1.5
    assert reservation not in ledger.reservations()
    assert ledger.reservations() == ()


def test_an_allocated_reservation_outlives_its_ttl_until_nvml_shows_it(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    reservation = ledger.reserve(5 * GiB, "api client", ttl_s=1.0)
    clock.advance(0.5)
    ledger.mark_allocated(reservation.id)
    clock.advance(10.0)
    assert ledger.get(reservation.id) is not None  # dropping it now could admit its bytes twice
    assert ledger.available_bytes() == 7 * GiB
    ledger.observe(total_bytes=16 * GiB, free_bytes=9 * GiB, sampled_at=clock())
    assert ledger.get(reservation.id) is None
    assert ledger.available_bytes() == 7 * GiB


def test_release_is_idempotent(clock: ManualClock) -> None:
    ledger = ledger_with(clock)
    a = ledger.reserve(4 * GiB, "a")
    b = ledger.reserve(4 * GiB, "b")
    ledger.release(a.id)
    assert ledger.outstanding_bytes() == 4 * GiB
    ledger.release(a.id)
    ledger.release("never-existed")
    assert ledger.outstanding_bytes() == 4 * GiB
    assert ledger.reservations() == (b,)
    ledger.release(b.id)
    assert ledger.available_bytes() == 12 * GiB


@pytest.mark.parametrize("nbytes", [0, -1, -(4 * GiB), True, 1.5, 2.0, "1 GiB", None])
def test_invalid_sizes_are_refused(clock: ManualClock, nbytes: object) -> None:
    ledger = ledger_with(clock)
    with pytest.raises(InvalidInput) as info:
        ledger.reserve(nbytes, "bad")  # type: ignore[arg-type]
    assert info.value.details["field"] == "nbytes"
    assert repr(nbytes) in str(info.value)
    assert ledger.reservations() == ()
    assert ledger.allocation_failures_total == {"invalid_input": 1}


@pytest.mark.parametrize(
    ("pid", "ttl_s"), [(0, None), (-5, None), (None, 0.0), (None, -1.0), (None, float("inf"))]
)
def test_invalid_pid_or_ttl_is_refused(clock: ManualClock, pid: int | None, ttl_s: float | None) -> None:
    ledger = ledger_with(clock)
    with pytest.raises(InvalidInput):
        ledger.reserve(1 * GiB, "bad", pid=pid, ttl_s=ttl_s)
    assert ledger.reservations() == ()


def test_no_sample_yet_means_the_gpu_is_unavailable(clock: ManualClock) -> None:
    ledger = Ledger(1, headroom_bytes=HEADROOM, clock=clock)
    assert ledger.total_bytes() is None
    assert ledger.headroom() is None
    assert ledger.last_sample_at() is None
    assert ledger.available_bytes() == 0
    with pytest.raises(GpuUnavailable) as info:
        ledger.reserve(1 * GiB, "early")
    assert "no sample yet" in str(info.value)
    assert info.value.gpu == 1
    assert ledger.allocation_failures_total == {"gpu_unavailable": 1}


def test_impossible_samples_are_refused_with_the_values(clock: ManualClock) -> None:
    ledger = Ledger(0, headroom_bytes=HEADROOM, clock=clock)
    with pytest.raises(InvalidInput, match="free_bytes=17"):
        ledger.observe(total_bytes=16, free_bytes=17, sampled_at=clock())
    with pytest.raises(InvalidInput, match="total_bytes=0"):
        ledger.observe(total_bytes=0, free_bytes=0, sampled_at=clock())
    assert ledger.last_sample_at() is None


def test_failures_after_admission_are_counted_by_reason(clock: ManualClock) -> None:
    ledger = ledger_with(clock, free=4 * GiB)
    with pytest.raises(InsufficientVram):
        ledger.reserve(3 * GiB, "big")
    ledger.count_failure("cuda_allocation_failed")
    assert ledger.allocation_failures_total == {"insufficient_vram": 1, "cuda_allocation_failed": 1}
    counters = ledger.allocation_failures_total
    counters["insufficient_vram"] = 99  # a copy: the ledger's own counters stay intact
    assert ledger.allocation_failures_total["insufficient_vram"] == 1


# --- the registry -------------------------------------------------------------------------------------


def gpu_snapshot(index: int, *, total: int, free: int, state: GpuState = GpuState.OK) -> GpuSnapshot:
    return GpuSnapshot(
        index=index,
        name=f"Test GPU {index}",
        uuid=f"GPU-{index:08d}",
        total_bytes=total,
        used_bytes=total - free,
        free_bytes=free,
        reserved_bytes=None,
        temperature_c=None,
        utilization_percent=None,
        state=state,
        message=None if state == GpuState.OK else f"GPU {index} has fallen off the bus; reboot to recover",
    )


def test_ledgers_feed_every_gpu_and_suspend_lost_ones(clock: ManualClock) -> None:
    ledgers = Ledgers(HEADROOM, clock)
    snapshot = TelemetrySnapshot(
        backend="simulated",
        state=BackendState.SIMULATED,
        taken_at=clock(),
        gpus=(
            gpu_snapshot(0, total=16 * GiB, free=14 * GiB),
            gpu_snapshot(1, total=80 * GiB, free=40 * GiB),
            gpu_snapshot(2, total=24 * GiB, free=0, state=GpuState.LOST),
        ),
    )
    ledgers.observe_snapshot(snapshot, live_pids={1})
    assert list(ledgers) == [0, 1, 2]
    assert len(ledgers) == 3
    assert ledgers[0].available_bytes() == 12 * GiB
    assert ledgers.for_gpu(1).available_bytes() == 32 * GiB
    assert ledgers.for_gpu(1) is ledgers[1]
    with pytest.raises(GpuUnavailable, match="fallen off the bus"):
        ledgers[2].reserve(1 * GiB, "model")
    reservation = ledgers[1].reserve(8 * GiB, "model", pid=1)
    assert reservation.gpu == 1
    assert ledgers.find(reservation.id) == reservation
    assert ledgers.find("nope") is None
    with pytest.raises(KeyError):
        ledgers[7]
    assert ledgers.allocation_failures_total == {"gpu_unavailable": 1}


def test_a_failing_backend_suspends_admission_until_a_good_sample(clock: ManualClock) -> None:
    ledgers = Ledgers(HEADROOM, clock)
    good = TelemetrySnapshot(
        backend="nvml",
        state=BackendState.OK,
        taken_at=clock(),
        gpus=(gpu_snapshot(0, total=16 * GiB, free=14 * GiB),),
    )
    ledgers.observe_snapshot(good)
    ledgers[0].reserve(1 * GiB, "first")
    clock.advance(1.0)
    failing = TelemetrySnapshot(
        backend="nvml", state=BackendState.ERROR, taken_at=clock(), message="NVML query failed; retrying"
    )
    ledgers.observe_snapshot(failing)
    assert ledgers[0].unavailable_reason() == "NVML query failed; retrying"
    with pytest.raises(GpuUnavailable, match="NVML query failed"):
        ledgers[0].reserve(1 * GiB, "second")
    clock.advance(1.0)
    ledgers.observe_snapshot(
        TelemetrySnapshot(
            backend="nvml",
            state=BackendState.OK,
            taken_at=clock(),
            gpus=(gpu_snapshot(0, total=16 * GiB, free=14 * GiB),),
        )
    )
    assert ledgers[0].unavailable_reason() is None
    ledgers[0].reserve(1 * GiB, "third")
    assert ledgers[0].outstanding_bytes() == 2 * GiB
    assert ledgers.concurrent_allocation_attempts_total == 2  # "second" and "third" found "first" outstanding


def test_ledgers_for_gpu_creates_one_ledger_per_gpu_under_concurrency() -> None:
    ledgers = Ledgers(HEADROOM)
    barrier = threading.Barrier(8)
    seen: list[Ledger] = []

    def grab() -> None:
        barrier.wait()
        seen.append(ledgers.for_gpu(0))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen) == 8
    assert all(ledger is seen[0] for ledger in seen)
    assert len(ledgers) == 1
