"""Reservations with many outstanding: create and release p99, and `/healthz` during a burst of creates
(issue 17), against the real API on loopback, with the reference measured in the same run.

  * API: the daemon's runtime (`build_runtime`, the engine's own worker thread) on a simulated 24 GiB GPU,
    the real aiohttp server on 127.0.0.1. With N reservations outstanding (N = 100 and 10,000; the daemon's
    cap of 4,096 outstanding is lifted for the run), it times `POST /v1/reservations` and `DELETE
    /v1/reservations/{id}` one at a time over one keep-alive connection, then fires a burst of 50 concurrent
    creates (16 connections) while another connection asks `/healthz` every 2 ms.
  * the same API serving from the old book (below), filled directly with 100 and 1,200 outstanding (the
    issue's case: a burst of 50 creates with 1,200 outstanding blocked `/healthz` for 5.2 s).
  * reference: the book and ledger as they were before the fix (commit 0828621, read with `git show` and
    loaded under other module names), driven in-process through the same calls the API makes (request,
    get, release). Every request there re-checked every record against the ledger, and each ledger look-up
    re-walked every reservation for expiry: O(n^2) per request. Building 10,000 through it would take hours
    (the sum of n^2), so its outstanding reservations are put in its dictionaries directly, and it is timed
    at 100, 500, 1,000 and 2,000, with 10,000 extrapolated from the measured growth. The current book is
    timed in-process the same way for comparison.

    python3 bench/reservation_bench.py [--out results.json] [--n 10000] [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.core.units import GiB  # noqa: E402

OLD_COMMIT = "08286217345d97c55df2400357201e2f4533f4e7"  # the parent of db4dc9d, which fixed it
SCENARIO = """
description = "reservation bench: one idle 24 GiB GPU"
duration_s = 86400

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 4090"
uuid = "GPU-00000000-0000-4000-8000-000000004090"
total = "24 GiB"
reserved = "256 MiB"
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1e3, 3),
        "p99_ms": round(pct(values, 99) * 1e3, 3),
        "max_ms": round(max(values) * 1e3, 3),
    }


# --- the real API ------------------------------------------------------------------------------------------


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def create(self, session: aiohttp.ClientSession) -> str:
        body = {"gpu": 0, "bytes": 1, "holder": "bench", "ttl_s": 86_000}
        async with session.post(f"{self.base}/v1/reservations", json=body, headers=self.headers) as answer:
            data = await answer.json()
            assert answer.status == 201, (answer.status, data)
            return str(data["id"])

    async def release(self, session: aiohttp.ClientSession, rid: str) -> None:
        async with session.delete(f"{self.base}/v1/reservations/{rid}", headers=self.headers) as answer:
            await answer.read()
            assert answer.status == 200, answer.status

    async def healthz(self, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{self.base}/healthz") as answer:
            await answer.read()
            assert answer.status == 200, answer.status


async def api_at(
    api: Api, outstanding: int, samples: int, burst: int, *, prefilled: bool = False
) -> dict[str, Any]:
    """Fill to `outstanding` (unless the book was filled directly), time creates and releases one at a time,
    then /healthz during a burst."""
    one = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    many = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    try:
        started = time.perf_counter()
        filler: list[str] = []
        while len(filler) < outstanding and not prefilled:
            batch = min(64, outstanding - len(filler))
            filler += await asyncio.gather(*(api.create(many) for _ in range(batch)))
        fill_s = time.perf_counter() - started
        creates, releases, made = [], [], []
        for _ in range(samples):
            t0 = time.perf_counter()
            made.append(await api.create(one))
            creates.append(time.perf_counter() - t0)
        for rid in made:
            t0 = time.perf_counter()
            await api.release(one, rid)
            releases.append(time.perf_counter() - t0)
        quiet: list[float] = []
        for _ in range(50):
            t0 = time.perf_counter()
            await api.healthz(probe)
            quiet.append(time.perf_counter() - t0)
        during: list[float] = []
        stop = asyncio.Event()

        async def probing() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                await api.healthz(probe)
                during.append(time.perf_counter() - t0)
                await asyncio.sleep(0.002)

        prober = asyncio.create_task(probing())
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        burst_ids = await asyncio.gather(*(api.create(many) for _ in range(burst)))
        burst_s = time.perf_counter() - t0
        await asyncio.sleep(0.02)
        stop.set()
        await prober
        for rid in [*burst_ids, *filler]:
            await api.release(many, rid)
        return {
            "outstanding": outstanding,
            "fill_s": round(fill_s, 2),
            "create": summary_ms(creates),
            "release": summary_ms(releases),
            "healthz_quiet": summary_ms(quiet),
            "healthz_during_burst": summary_ms(during),
            "burst": {"creates": burst, "seconds": round(burst_s, 3)},
        }
    finally:
        await one.close()
        await many.close()
        await probe.close()


def run_api(sizes: list[int], samples: int, burst: int, *, old: bool = False) -> list[dict[str, Any]]:
    """The real API; with `old`, serving from the book and ledger of OLD_COMMIT instead (filled directly;
    the engine does not see its reservations, which changes nothing on an idle simulated GPU)."""
    from app.core.wiring import build_runtime

    state = Path(tempfile.mkdtemp(prefix="reservation-bench-"))
    os.environ["VRAM_STEWARD_STATE_DIR"] = str(state / "state")
    scenario = state / "scenario.toml"
    scenario.write_text(SCENARIO)
    runtime = build_runtime(Settings(api_port=0, auto_evict=False), simulate=scenario, audit=False)
    assert runtime.api is not None
    runtime.api.reservations._max_outstanding = 2 * max(sizes) + burst  # the daemon's cap is 4,096
    runtime.api.reservations._max_per_client = 2 * max(sizes) + burst  # and 1,024 per client
    runtime.start_worker()
    try:
        deadline = time.monotonic() + 10
        while runtime.steward.snapshot is None and time.monotonic() < deadline:
            time.sleep(0.01)
        api = Api(f"http://127.0.0.1:{runtime.api.bound_port}", runtime.api.token)
        if not old:
            return [asyncio.run(api_at(api, n, samples, burst)) for n in sizes]
        rows = []
        old_ledger, old_book = load_old_book()
        for n in sizes:
            ledgers, book = make_book(old_ledger, old_book, time.monotonic)
            fill_directly(old_ledger, old_book, ledgers, book, n, time.monotonic())
            runtime.api.reservations = book
            rows.append(asyncio.run(api_at(api, n, samples, burst, prefilled=True)))
        return rows
    finally:
        runtime.stop()


# --- in-process: the book before the fix and now ------------------------------------------------------------


def load_old_book() -> tuple[Any, Any]:
    """(ledger module, reservations module) as of OLD_COMMIT, loaded under private names."""
    sources = {}
    for path in ("app/core/residency/ledger.py", "app/core/residency/reservations.py"):
        sources[path] = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:{path}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    ledger = types.ModuleType("_old_ledger")
    sys.modules[ledger.__name__] = ledger
    exec(compile(sources["app/core/residency/ledger.py"], "old ledger.py", "exec"), ledger.__dict__)
    book = types.ModuleType("_old_reservations")
    sys.modules[book.__name__] = book
    text = sources["app/core/residency/reservations.py"].replace(
        "from app.core.residency.ledger import", "from _old_ledger import"
    )
    exec(compile(text, "old reservations.py", "exec"), book.__dict__)
    return ledger, book


def make_book(ledger_mod: Any, book_mod: Any, clock: Callable[[], float]) -> tuple[Any, Any]:
    ledgers = ledger_mod.Ledgers(headroom_bytes=lambda total: 2 * GiB, clock=clock)
    ledgers.for_gpu(0).observe(total_bytes=24 * GiB, free_bytes=20 * GiB, sampled_at=clock())
    parameters = book_mod.ReservationBook.__init__.__code__.co_varnames
    kwargs = {name: 1_000_000 for name in ("max_outstanding", "max_per_client") if name in parameters}
    return ledgers, book_mod.ReservationBook(ledgers, clock=clock, **kwargs)


def request(book_mod: Any) -> Any:
    return book_mod.ReservationRequest(gpu=0, nbytes=1, holder="bench", ttl_s=86_000.0, wait_s=0.0)


def fill_directly(ledger_mod: Any, book_mod: Any, ledgers: Any, book: Any, n: int, now: float) -> None:
    """Put n granted reservations into the old book's and ledger's dictionaries, as n requests would."""
    ledger = ledgers.for_gpu(0)
    for i in range(n):
        rid = f"{i:032x}"
        ledger._reservations[rid] = ledger_mod.Reservation(
            id=rid, gpu=0, nbytes=1, holder="bench", pid=None, created_at=now, expires_at=now + 86_000,
            allocated_at=None,
        )  # fmt: skip
        book._records[rid] = book_mod.ApiReservation(
            id=rid, gpu=0, nbytes=1, holder="bench", ttl_s=86_000.0, state=book_mod.ReservationState.GRANTED,
            created_at=now, wait_until=None, ledger_id=rid, granted_at=now,
        )  # fmt: skip


def time_ops(book_mod: Any, book: Any, samples: int) -> dict[str, Any]:
    """What the API does per create (request + get) and per release, one at a time."""
    creates, releases, made = [], [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        record = book.request(request(book_mod))
        book.get(record.id)
        creates.append(time.perf_counter() - t0)
        made.append(record.id)
    for rid in made:
        t0 = time.perf_counter()
        book.release(rid)
        releases.append(time.perf_counter() - t0)
    return {"create": summary_ms(creates), "release": summary_ms(releases)}


def run_in_process(
    sizes_old: list[int], sizes_new: list[int], samples_old: int, samples: int
) -> dict[str, Any]:
    clock = time.monotonic
    old_ledger, old_book = load_old_book()
    old: list[dict[str, Any]] = []
    for n in sizes_old:
        ledgers, book = make_book(old_ledger, old_book, clock)
        fill_directly(old_ledger, old_book, ledgers, book, n, clock())
        old.append({"outstanding": n, **time_ops(old_book, book, samples_old)})
    import app.core.residency.ledger as new_ledger
    import app.core.residency.reservations as new_book

    new: list[dict[str, Any]] = []
    for n in sizes_new:
        ledgers, book = make_book(new_ledger, new_book, clock)
        for _ in range(n):
            book.request(request(new_book))
        new.append({"outstanding": n, **time_ops(new_book, book, samples)})
    return {"old": old, "new": new}


def growth_exponent(points: list[dict[str, Any]], key: str) -> float:
    """The slope of log(p50) over log(n) between the smallest and the largest n measured."""
    first, last = points[0], points[-1]
    return math.log(last[key]["p50_ms"] / first[key]["p50_ms"]) / math.log(
        last["outstanding"] / first["outstanding"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="outstanding reservations (default 10,000)")
    parser.add_argument("--small", type=int, default=100, help="the small size to compare with (default 100)")
    parser.add_argument("--samples", type=int, default=200, help="timed creates and releases per size")
    parser.add_argument("--burst", type=int, default=50, help="concurrent creates in the burst")
    parser.add_argument("--old-n", type=int, default=1_200, help="outstanding for the old book over HTTP")
    parser.add_argument("--old-samples", type=int, default=10, help="timed creates and releases, old book")
    parser.add_argument(
        "--old-burst", type=int, default=50, help="concurrent creates in the old book's burst"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    api = run_api([args.small, args.n], args.samples, args.burst)
    api_old = run_api([args.small, args.old_n], args.old_samples, args.old_burst, old=True)
    sizes_old = [args.small, 500, 1_000, 2_000]
    local = run_in_process(sizes_old, [args.small, 2_000, args.n], samples_old=10, samples=args.samples)
    exponent = growth_exponent(local["old"], "create")
    old_2000 = local["old"][-1]["create"]["p50_ms"]
    old_at_n = old_2000 * (args.n / sizes_old[-1]) ** exponent
    small, big = api
    ratios = {
        "api_create_p99_n_over_small": round(big["create"]["p99_ms"] / small["create"]["p99_ms"], 2),
        "api_release_p99_n_over_small": round(big["release"]["p99_ms"] / small["release"]["p99_ms"], 2),
        "api_healthz_burst_p99_n_over_small": round(
            big["healthz_during_burst"]["p99_ms"] / small["healthz_during_burst"]["p99_ms"], 2
        ),
        "old_create_p50_2000_over_small": round(old_2000 / local["old"][0]["create"]["p50_ms"], 1),
        "new_create_p50_2000_over_small": round(
            local["new"][1]["create"]["p50_ms"] / local["new"][0]["create"]["p50_ms"], 2
        ),
        "new_create_p50_n_over_small": round(
            local["new"][-1]["create"]["p50_ms"] / local["new"][0]["create"]["p50_ms"], 2
        ),
        "old_create_growth_exponent": round(exponent, 2),
        "old_create_p50_ms_at_n_extrapolated": round(old_at_n, 1),
        "old_over_new_create_p50_at_2000": round(old_2000 / local["new"][1]["create"]["p50_ms"], 1),
    }
    old_small, old_big = api_old
    ratios["old_api_create_p99_old_n_over_small"] = round(
        old_big["create"]["p99_ms"] / old_small["create"]["p99_ms"], 1
    )
    ratios["old_api_healthz_burst_max_ms_at_old_n"] = old_big["healthz_during_burst"]["max_ms"]
    results = {
        "api": api,
        "api_old": api_old,
        "in_process": local,
        "ratios": ratios,
        "python": sys.version.split()[0],
    }
    for label, row in [*(("API", r) for r in api), *(("API, old book", r) for r in api_old)]:
        print(
            f"{label}, {row['outstanding']:>6} outstanding: create p50 {row['create']['p50_ms']} ms p99 "
            f"{row['create']['p99_ms']} ms; release p50 {row['release']['p50_ms']} ms p99 "
            f"{row['release']['p99_ms']} ms; /healthz quiet p99 {row['healthz_quiet']['p99_ms']} ms, "
            f"during a burst of {row['burst']['creates']} creates ({row['burst']['seconds']} s) p50 "
            f"{row['healthz_during_burst']['p50_ms']} p99 {row['healthz_during_burst']['p99_ms']} max "
            f"{row['healthz_during_burst']['max_ms']} ms; filled in {row['fill_s']} s"
        )
    for name in ("old", "new"):
        for row in local[name]:
            print(
                f"in-process {name}, {row['outstanding']:>6} outstanding: create p50 "
                f"{row['create']['p50_ms']} p99 {row['create']['p99_ms']} ms; release p50 "
                f"{row['release']['p50_ms']} p99 {row['release']['p99_ms']} ms"
            )
    for key, value in ratios.items():
        print(f"{key}: {value}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
