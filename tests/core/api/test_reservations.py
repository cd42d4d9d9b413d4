"""Reservations over the real HTTP server: admission shared with the engine, the FIFO queue, long polls,
TTL expiry, release, and racing clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from app.core.gpu.simulated import ManualClock
from app.core.units import GiB, MiB
from tests.fixtures.api_server import CONTENTION_SCENARIO, CONTENTION_SETTINGS, ApiHandle


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(0.0)


@pytest.fixture
def frozen(start: Callable[..., ApiHandle], clock: ManualClock) -> ApiHandle:
    """game-launch with time standing still at t = 0 (the 8 GiB model stays in its load: still counted)."""
    return start(clock=clock)


def available(api: ApiHandle, gpu: int = 0) -> int:
    return int(api.steward.ledgers.for_gpu(gpu).available_bytes())


def reserve(api: ApiHandle, nbytes: int, **extra: object) -> tuple[int, dict[str, str], dict[str, object]]:
    return api.call(
        "/v1/reservations", method="POST", body={"gpu": 0, "bytes": nbytes, "holder": "test", **extra}
    )


def test_a_reservation_is_granted_201_and_counts_in_the_ledger(frozen: ApiHandle) -> None:
    before = available(frozen)
    assert before > 512 * MiB
    status, headers, body = reserve(frozen, 512 * MiB, ttl_s=60)
    assert status == 201, body
    assert body["state"] == "granted" and body["bytes"] == 512 * MiB and body["holder"] == "test"
    assert headers["Location"] == f"/v1/reservations/{body['id']}"
    assert available(frozen) == before - 512 * MiB
    assert frozen.steward.ledgers.for_gpu(0).get(body["id"]) is not None
    _, _, doc = frozen.call("/v1/status")
    listed = {r["id"]: r for r in doc["reservations"]}
    assert listed[body["id"]]["holder"] == "test" and listed[body["id"]]["bytes"] == 512 * MiB
    assert doc["queue"] == []


def test_api_reservations_count_in_admission_like_our_own_loads(
    start: Callable[..., ApiHandle], clock: ManualClock
) -> None:
    api = start(scenario=CONTENTION_SCENARIO, settings=CONTENTION_SETTINGS, clock=clock)
    api.call("/v1/models/llama-13b/unload", method="POST", body={})
    api.wait_ticks(2)
    free = available(api)
    assert 6 * GiB < free < 16 * GiB  # 13b fits alone, 70b never while Blender runs
    status, _, held = reserve(api, free - 5 * GiB, holder="other-server")
    assert status == 201
    status, _, problem = api.call("/v1/models/llama-13b/load", method="POST", body={})
    assert status == 507 and problem["error"] == "insufficient_vram"
    assert problem["need_bytes"] == 6 * GiB
    assert api.call(f"/v1/reservations/{held['id']}", method="DELETE")[0] == 200
    status, _, body = api.call("/v1/models/llama-13b/load", method="POST", body={})
    assert status == 202 and body["model"]["state"] in ("loading", "resident")


def test_not_fitting_is_a_507_problem_with_retry_after(frozen: ApiHandle) -> None:
    free = available(frozen)
    status, headers, problem = reserve(frozen, free + MiB)
    assert status == 507
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["error"] == "insufficient_vram" and problem["retriable"] is True
    assert problem["need_bytes"] == free + MiB and problem["available_bytes"] == free
    assert problem["suggestions"] and isinstance(problem["retry_after"], (int, float))
    assert int(headers["Retry-After"]) >= 1
    assert available(frozen) == free  # nothing was taken


def test_the_queue_is_first_in_first_out_and_visible_in_status(frozen: ApiHandle) -> None:
    free = available(frozen)
    _, _, blocker = reserve(frozen, free - 100 * MiB, holder="blocker")
    status, headers, first = reserve(frozen, 500 * MiB, holder="first", wait_s=30)
    assert status == 202 and first["state"] == "waiting" and first["position"] == 1
    assert headers["Location"] == f"/v1/reservations/{first['id']}"
    status, _, second = reserve(frozen, 50 * MiB, holder="second", wait_s=30)
    assert status == 202 and second["position"] == 2  # it would fit, but it does not jump the queue
    status, _, problem = reserve(frozen, 10 * MiB, holder="impatient")
    assert status == 507 and problem["details"]["queued_ahead"] == 2
    _, _, doc = frozen.call("/v1/status")
    assert [(q["holder"], q["position"]) for q in doc["queue"]] == [("first", 1), ("second", 2)]

    assert frozen.call(f"/v1/reservations/{blocker['id']}", method="DELETE")[2]["state"] == "released"
    assert frozen.call(f"/v1/reservations/{first['id']}")[2]["state"] == "granted"
    assert frozen.call(f"/v1/reservations/{second['id']}")[2]["state"] == "granted"
    assert frozen.call("/v1/status")[2]["queue"] == []


def test_a_long_poll_returns_when_the_reservation_is_granted(frozen: ApiHandle) -> None:
    free = available(frozen)
    _, _, blocker = reserve(frozen, free, holder="blocker")
    _, _, waiter = reserve(frozen, 100 * MiB, holder="waiter", wait_s=60)
    timer = threading.Timer(
        0.3, frozen.call, args=(f"/v1/reservations/{blocker['id']}",), kwargs={"method": "DELETE"}
    )
    timer.start()
    started = time.monotonic()
    status, _, body = frozen.call(f"/v1/reservations/{waiter['id']}?wait_s=20")
    elapsed = time.monotonic() - started
    timer.join()
    assert status == 200 and body["state"] == "granted"
    assert 0.2 < elapsed < 10


def test_a_long_poll_on_a_still_waiting_reservation_answers_waiting(frozen: ApiHandle) -> None:
    _, _, _blocker = reserve(frozen, available(frozen), holder="blocker")
    _, _, waiter = reserve(frozen, 100 * MiB, holder="waiter", wait_s=60)
    status, _, body = frozen.call(f"/v1/reservations/{waiter['id']}?wait_s=0.2")
    assert status == 200 and body["state"] == "waiting" and body["position"] == 1


def test_a_wait_that_runs_out_is_a_507_problem_and_counts_as_a_failure(
    frozen: ApiHandle, clock: ManualClock
) -> None:
    ledger = frozen.steward.ledgers.for_gpu(0)
    reserve(frozen, available(frozen), holder="blocker")
    failures_before = ledger.allocation_failures_total.get("insufficient_vram", 0)
    _, _, waiter = reserve(frozen, 100 * MiB, holder="waiter", wait_s=5)
    clock.advance(6)
    status, headers, problem = frozen.call(f"/v1/reservations/{waiter['id']}")
    assert status == 507 and problem["error"] == "insufficient_vram"
    assert problem["details"]["state"] == "timed_out" and problem["details"]["id"] == waiter["id"]
    assert "Retry-After" in headers
    assert ledger.allocation_failures_total.get("insufficient_vram", 0) == failures_before + 1
    assert frozen.call("/v1/status")[2]["queue"] == []


def test_a_reservation_expires_after_its_ttl(frozen: ApiHandle, clock: ManualClock) -> None:
    free = available(frozen)
    _, _, body = reserve(frozen, 256 * MiB, ttl_s=10)
    assert available(frozen) == free - 256 * MiB
    clock.advance(9.5)
    assert frozen.call(f"/v1/reservations/{body['id']}")[2]["state"] == "granted"
    clock.advance(1)
    assert available(frozen) == free
    assert frozen.call(f"/v1/reservations/{body['id']}")[2]["state"] == "expired"
    ids = [r["id"] for r in frozen.call("/v1/status")[2]["reservations"]]
    assert body["id"] not in ids


def test_release_is_idempotent_and_unknown_ids_are_404(frozen: ApiHandle) -> None:
    free = available(frozen)
    _, _, body = reserve(frozen, 64 * MiB)
    for _ in range(2):
        status, _, released = frozen.call(f"/v1/reservations/{body['id']}", method="DELETE")
        assert status == 200 and released["state"] == "released"
    assert available(frozen) == free
    for method in ("GET", "DELETE"):
        status, headers, problem = frozen.call("/v1/reservations/nope", method=method)
        assert status == 404 and problem["error"] == "not_found"
        assert headers["Content-Type"].startswith("application/problem+json")


def test_marked_allocated_then_settled_once_a_sample_shows_it(frozen: ApiHandle, clock: ManualClock) -> None:
    _, _, body = reserve(frozen, 64 * MiB)
    status, _, marked = frozen.call(f"/v1/reservations/{body['id']}/allocated", method="POST", body={})
    assert status == 200 and marked["state"] == "allocated"
    status, _, problem = frozen.call(f"/v1/reservations/{body['id']}/allocated", method="POST", body={})
    assert status == 400 and "only a granted one" in problem["message"]
    clock.advance(0.5)
    frozen.wait_ticks(2)
    assert frozen.call(f"/v1/reservations/{body['id']}")[2]["state"] == "settled"


def test_fifty_racing_clients_never_over_commit(frozen: ApiHandle) -> None:
    free = available(frozen)
    size = free // 20  # exactly 20 fit
    barrier = threading.Barrier(50)
    results: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        status, _, _ = reserve(frozen, size, holder=f"racer-{i}")
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(set(results)) == [201, 507]
    assert results.count(201) == 20
    ledger = frozen.steward.ledgers.for_gpu(0)
    api_bytes = sum(r.nbytes for r in ledger.reservations() if r.holder.startswith("racer-"))
    assert api_bytes == 20 * size <= free
    assert ledger.available_bytes() >= 0
