"""Reservations cannot be used to stall the API: one create costs about the same with 2000 outstanding as
with 100 (it used to scan every reservation, and every ledger entry for each: O(n^2) on the event loop),
and the number outstanding is capped with a clear 429 problem."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.gpu.simulated import ManualClock
from app.core.residency.ledger import Ledgers
from app.core.residency.reservations import ReservationBook, ReservationRequest
from app.core.units import GiB, MiB
from tests.fixtures.api_server import ApiHandle

TOTAL = 80 * GiB
FILL_BUDGET_S = 20.0  # 2000 creates take well under a second; O(n^2) each took minutes


def _book() -> ReservationBook:
    clock = ManualClock()
    ledgers = Ledgers(headroom_bytes=lambda total: GiB, clock=clock)
    ledgers.for_gpu(0).observe(total_bytes=TOTAL, free_bytes=TOTAL, sampled_at=clock())
    return ReservationBook(ledgers, clock=clock)


def _create_cost_s(book: ReservationBook, tries: int = 40) -> float:
    """The cheapest of `tries` creates (each released again, outside the timing, so the count stays)."""
    best = float("inf")
    for i in range(tries):
        start = time.perf_counter()
        record = book.request(ReservationRequest(gpu=0, nbytes=MiB, holder=f"probe-{i}", ttl_s=600, wait_s=0))
        best = min(best, time.perf_counter() - start)
        book.release(record.id)
    return best


def _fill(book: ReservationBook, count: int, outstanding: Callable[[], int]) -> None:
    deadline = time.monotonic() + FILL_BUDGET_S
    while outstanding() < count:
        book.request(ReservationRequest(gpu=0, nbytes=MiB, holder="filler", ttl_s=600, wait_s=0))
        assert time.monotonic() < deadline, (
            f"{outstanding()} creates took over {FILL_BUDGET_S:g} s: each one scans what is outstanding"
        )


def test_a_create_costs_about_the_same_with_2000_outstanding_as_with_100() -> None:
    book = _book()
    filled = [0]

    def outstanding() -> int:
        filled[0] = len(book.active())
        return filled[0]

    _fill(book, 100, outstanding)
    with_100 = _create_cost_s(book)
    _fill(book, 2000, outstanding)
    with_2000 = _create_cost_s(book)
    assert len(book.active()) == 2000
    assert with_2000 < 5 * with_100, (with_100, with_2000)


def test_outstanding_reservations_are_capped_with_a_429_problem(api: ApiHandle) -> None:
    runtime_api = api.runtime.api
    assert runtime_api is not None
    runtime_api.reservations = ReservationBook(
        api.steward.ledgers, clock=api.steward.clock, max_outstanding=3
    )
    body = {"gpu": 0, "bytes": 1024, "holder": "flood", "ttl_s": 60}
    ids = []
    for _ in range(3):
        status, _, created = api.call("/v1/reservations", method="POST", body=body)
        assert status == 201, created
        ids.append(created["id"])
    status, headers, problem = api.call("/v1/reservations", method="POST", body=body)
    assert status == 429
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["error"] == "too_many_reservations" and problem["retriable"] is True
    assert problem["details"]["outstanding"] == 3 and "Retry-After" in headers
    assert api.call(f"/v1/reservations/{ids[0]}", method="DELETE")[0] == 200
    assert api.call("/v1/reservations", method="POST", body=body)[0] == 201  # room again
