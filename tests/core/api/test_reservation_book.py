"""ReservationBook on real ledgers fed with samples, under a manual clock: FIFO admission, waits that run
out, queue limits, and no allocation failure counted while a queue head merely waits."""

from __future__ import annotations

import pytest

from app.core.errors import InsufficientVram, InvalidInput
from app.core.gpu.simulated import ManualClock
from app.core.residency.ledger import Ledgers
from app.core.residency.reservations import (
    QueueFull,
    ReservationBook,
    ReservationRequest,
    ReservationState,
    UnknownReservation,
    parse_reservation_request,
)
from app.core.units import GiB, MiB

TOTAL = 12 * GiB
HEADROOM = 2 * GiB


def make(clock: ManualClock, free: int, max_waiting: int = 8) -> tuple[Ledgers, ReservationBook]:
    ledgers = Ledgers(headroom_bytes=lambda total: HEADROOM, clock=clock)
    ledgers.for_gpu(0).observe(total_bytes=TOTAL, free_bytes=free, sampled_at=clock())
    return ledgers, ReservationBook(ledgers, clock=clock, max_waiting_per_gpu=max_waiting)


def request(nbytes: int, wait_s: float = 0.0, holder: str = "h", ttl_s: float = 60.0) -> ReservationRequest:
    return ReservationRequest(gpu=0, nbytes=nbytes, holder=holder, ttl_s=ttl_s, wait_s=wait_s)


def sample(ledgers: Ledgers, clock: ManualClock, free: int) -> None:
    clock.advance(0.1)
    ledgers.for_gpu(0).observe(total_bytes=TOTAL, free_bytes=free, sampled_at=clock())


def test_heads_are_admitted_in_order_as_vram_comes_free() -> None:
    clock = ManualClock()
    ledgers, book = make(clock, free=HEADROOM + 1 * GiB)
    first = book.request(request(2 * GiB, wait_s=30, holder="first"))
    second = book.request(request(512 * MiB, wait_s=30, holder="second"))
    assert first.state == second.state == ReservationState.WAITING
    assert book.pump() == []  # 1 GiB free: the head does not fit and the second may not pass it
    sample(ledgers, clock, HEADROOM + 2 * GiB + 256 * MiB)
    assert [r.holder for r in book.pump()] == ["first"]
    assert book.get(second.id)[1] == 1  # now at the head
    sample(ledgers, clock, HEADROOM + 3 * GiB)
    assert [r.holder for r in book.pump()] == ["second"]
    assert book.queue_lengths() == {0: 0}


def test_waiting_heads_do_not_count_as_allocation_failures() -> None:
    clock = ManualClock()
    ledgers, book = make(clock, free=HEADROOM)
    book.request(request(1 * GiB, wait_s=30))
    for _ in range(50):
        book.pump()
    assert ledgers.allocation_failures_total == {}
    clock.advance(31)
    book.pump()
    assert ledgers.allocation_failures_total == {"insufficient_vram": 1}


def test_a_wait_that_runs_out_is_timed_out_with_the_facts() -> None:
    clock = ManualClock()
    _, book = make(clock, free=HEADROOM + 100 * MiB)
    waiting = book.request(request(1 * GiB, wait_s=5))
    clock.advance(5)
    record, position = book.get(waiting.id)
    assert record.state == ReservationState.TIMED_OUT and position is None
    error = book.timeout_error(record)
    assert isinstance(error, InsufficientVram)
    assert error.needed_bytes == 1 * GiB and error.available_bytes == 100 * MiB
    assert error.details["state"] == "timed_out" and error.retry_after_s


def test_immediate_requests_do_not_jump_the_queue() -> None:
    clock = ManualClock()
    _, book = make(clock, free=HEADROOM + 1 * GiB)
    book.request(request(2 * GiB, wait_s=30))
    with pytest.raises(InsufficientVram) as refused:
        book.request(request(1 * MiB))
    assert refused.value.details["queued_ahead"] == 1


def test_the_queue_has_a_limit() -> None:
    clock = ManualClock()
    _, book = make(clock, free=HEADROOM, max_waiting=2)
    book.request(request(GiB, wait_s=10))
    book.request(request(GiB, wait_s=10))
    with pytest.raises(QueueFull) as full:
        book.request(request(GiB, wait_s=10))
    assert full.value.http_status == 429 and full.value.retry_after_s


def test_cancel_a_waiting_request_and_forget_ended_ones_later() -> None:
    clock = ManualClock()
    _, book = make(clock, free=HEADROOM)
    waiting = book.request(request(GiB, wait_s=10))
    assert book.release(waiting.id).state == ReservationState.CANCELLED
    assert book.queue_json() == []
    clock.advance(601)
    with pytest.raises(UnknownReservation):
        book.get(waiting.id)


def test_a_grant_that_fits_needs_no_wait() -> None:
    clock = ManualClock()
    ledgers, book = make(clock, free=HEADROOM + 2 * GiB)
    granted = book.request(request(GiB, wait_s=10))
    assert granted.state == ReservationState.GRANTED and granted.ledger_id == granted.id
    assert ledgers.for_gpu(0).available_bytes() == GiB


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"gpu": 0, "bytes": 13 * GiB, "holder": "h"}, "can never fit"),
        ({"gpu": 1, "bytes": 1, "holder": "h"}, "unknown GPU 1; known: 0"),
        ({"gpu": 0, "bytes": 1, "holder": "h", "extra": 1}, "unknown field"),
        ({"gpu": 0, "bytes": 1, "holder": "h", "wait_s": float("nan")}, "wait_s"),
    ],
)
def test_parse_names_the_problem(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_reservation_request(body, {0: TOTAL})


def test_parse_fills_defaults_and_skips_the_size_check_on_an_unmeasurable_gpu() -> None:
    parsed = parse_reservation_request({"gpu": 0, "bytes": 20 * GiB, "holder": "h"}, {0: None})
    assert parsed.ttl_s == 300.0 and parsed.wait_s == 0.0 and parsed.nbytes == 20 * GiB
