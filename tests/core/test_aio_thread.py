"""AsyncioThread: results cross threads, hung coroutines time out without hurting the loop, stop is clean."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.core.aio_thread import AsyncioThread


@pytest.fixture
def aio():
    thread = AsyncioThread(name="test-asyncio")
    thread.start()
    yield thread
    thread.stop(timeout_s=5.0)


def test_run_returns_the_result_computed_on_the_loop_thread(aio: AsyncioThread) -> None:
    async def where() -> tuple[str, int]:
        await asyncio.sleep(0)
        return threading.current_thread().name, 41 + 1

    name, value = aio.run(where(), timeout_s=2.0)
    assert (name, value) == ("test-asyncio", 42)


def test_run_reraises_the_coroutines_error(aio: AsyncioThread) -> None:
    async def fails() -> None:
        raise ValueError("bad value from the bus")

    with pytest.raises(ValueError, match="bad value from the bus"):
        aio.run(fails(), timeout_s=2.0)


def test_hung_coroutine_times_out_is_cancelled_and_the_thread_stays_usable(aio: AsyncioThread) -> None:
    cancelled = threading.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()  # never set: a D-Bus peer that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        aio.run(hangs(), timeout_s=0.2)
    assert time.monotonic() - started < 2.0
    assert cancelled.wait(2.0), "the hung coroutine was not cancelled"

    async def answer() -> str:
        return "still here"

    assert aio.run(answer(), timeout_s=2.0) == "still here"


def test_submit_returns_a_future_usable_from_any_thread(aio: AsyncioThread) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return 2 * x

    futures = [aio.submit(double(i)) for i in range(5)]
    assert [f.result(timeout=2.0) for f in futures] == [0, 2, 4, 6, 8]


def test_stop_cancels_pending_tasks_runs_their_cleanup_and_closes_the_loop() -> None:
    aio = AsyncioThread(name="test-stop")
    aio.start()
    cleaned = threading.Event()

    async def long_running() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()

    future = aio.submit(long_running())
    time.sleep(0.05)  # let it start
    loop = aio.loop
    started = time.monotonic()
    assert aio.stop(timeout_s=5.0) is True
    assert time.monotonic() - started < 3.0
    assert cleaned.is_set()
    assert future.cancelled()
    assert loop.is_closed()
    assert not aio.running
    assert aio.stop(timeout_s=1.0) is True  # idempotent


def test_submit_after_stop_fails_clearly_without_leaking_the_coroutine() -> None:
    aio = AsyncioThread(name="test-after-stop")
    aio.start()
    aio.stop()

    async def nothing() -> None:
        return None

    with pytest.raises(RuntimeError, match="not running"):
        aio.submit(nothing())
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        aio.start()


def test_run_from_the_loop_thread_is_refused_instead_of_deadlocking(aio: AsyncioThread) -> None:
    async def inner() -> int:
        return 1

    async def outer() -> str:
        try:
            aio.run(inner(), timeout_s=1.0)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "own thread" in aio.run(outer(), timeout_s=2.0)


def test_start_is_idempotent_and_the_thread_is_a_daemon(aio: AsyncioThread) -> None:
    loop = aio.loop
    aio.start()
    assert aio.loop is loop
    assert any(t.name == "test-asyncio" and t.daemon for t in threading.enumerate())
