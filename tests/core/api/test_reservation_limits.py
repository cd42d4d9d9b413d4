"""Reservations cannot be used to stall the API: one create costs about the same with 2000 outstanding as
with 100 (it used to scan every reservation, and every ledger entry for each: O(n^2) on the event loop),
and the number outstanding is capped with a clear 429 problem."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from app.core.gpu.simulated import ManualClock
from app.core.residency.ledger import Ledgers
from app.core.residency.reservations import (
    MAX_OUTSTANDING,
    ApiReservation,
    ReservationBook,
    ReservationRequest,
    ReservationState,
    TooManyForClient,
)
from app.core.units import GiB, MiB
from tests.fixtures.api_server import ApiHandle

TOTAL = 80 * GiB
FILL_BUDGET_S = 20.0  # 2000 creates take well under a second; O(n^2) each took minutes


def _book() -> ReservationBook:
    clock = ManualClock()
    ledgers = Ledgers(headroom_bytes=lambda total: GiB, clock=clock)
    ledgers.for_gpu(0).observe(total_bytes=TOTAL, free_bytes=TOTAL, sampled_at=clock())
    return ReservationBook(ledgers, clock=clock, max_per_client=MAX_OUTSTANDING)


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


def _client_book(**caps: int) -> ReservationBook:
    clock = ManualClock()
    ledgers = Ledgers(headroom_bytes=lambda total: GiB, clock=clock)
    ledgers.for_gpu(0).observe(total_bytes=TOTAL, free_bytes=TOTAL, sampled_at=clock())
    return ReservationBook(ledgers, clock=clock, **caps)


def _ask(book: ReservationBook, client: str, *, nbytes: int = MiB, wait_s: float = 0.0) -> ApiReservation:
    return book.request(
        ReservationRequest(gpu=0, nbytes=nbytes, holder="h", ttl_s=600, wait_s=wait_s, client=client)
    )


def test_one_client_that_never_releases_cannot_take_the_whole_book() -> None:
    book = _client_book(max_outstanding=10, max_per_client=4)
    greedy = [_ask(book, "tcp:127.0.0.1") for _ in range(4)]
    with pytest.raises(TooManyForClient) as caught:
        _ask(book, "tcp:127.0.0.1")
    assert caught.value.http_status == 429 and caught.value.retriable
    assert caught.value.details == {"client": "tcp:127.0.0.1", "outstanding": 4, "limit": 4}
    for other in ("unix:pid=42", "tcp:127.0.0.1/my-server"):  # others still get room
        _ask(book, other)
    book.release(greedy[0].id)  # a release gives the client its room back
    _ask(book, "tcp:127.0.0.1")


def test_one_client_cannot_fill_the_wait_queues() -> None:
    book = _client_book(max_waiting_per_client=2)
    _ask(book, "big", nbytes=TOTAL - GiB)  # everything admissible is taken: the rest must wait
    waiting = [_ask(book, "patient", wait_s=60) for _ in range(2)]
    assert all(r.state == ReservationState.WAITING for r in waiting)
    with pytest.raises(TooManyForClient) as caught:
        _ask(book, "patient", wait_s=60)
    assert caught.value.details == {"client": "patient", "waiting": 2, "limit": 2}
    assert _ask(book, "another", wait_s=60).state == ReservationState.WAITING
    book.release(waiting[0].id)  # cancelled: no longer waiting
    assert _ask(book, "patient", wait_s=60).state == ReservationState.WAITING


def test_the_per_client_cap_through_the_api_names_the_client(api: ApiHandle) -> None:
    runtime_api = api.runtime.api
    assert runtime_api is not None
    runtime_api.reservations = ReservationBook(api.steward.ledgers, clock=api.steward.clock, max_per_client=2)
    body = {"gpu": 0, "bytes": 1024, "holder": "flood", "ttl_s": 60}
    for _ in range(2):
        assert api.call("/v1/reservations", method="POST", body=body)[0] == 201
    status, headers, problem = api.call("/v1/reservations", method="POST", body=body)
    assert status == 429 and "Retry-After" in headers
    assert problem["error"] == "too_many_reservations_for_client"
    assert problem["details"]["client"] == "tcp:127.0.0.1"
    # a client that names itself is counted apart from the others on its address
    status, _, made = api.call("/v1/reservations", method="POST", body={**body, "client": "my-server"})
    assert status == 201 and made["client"] == "tcp:127.0.0.1/my-server"
    status, _, problem = api.call("/v1/reservations", method="POST", body={**body, "client": "\u0000"})
    assert status == 400 and problem["details"]["field"] == "client"
