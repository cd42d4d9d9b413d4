"""StewardClient against the real server in a contention scenario (S1 on a 24 GiB card: Blender holds 10 GiB).

Backoff runs under an injected clock and sleep, so the timing is exact and the test never sleeps: the fake
sleep advances the fake clock and, when a test asks, frees the VRAM that blocked the client.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.client import ApiError, RetryAttempt, RetryPolicy, StewardClient
from app.core.config import ModelConfig
from app.core.errors import InsufficientVram
from app.core.gpu.simulated import ManualClock
from app.core.units import GiB, MiB
from tests.fixtures.api_server import CONTENTION_SCENARIO, CONTENTION_SETTINGS, ApiHandle, start_api


class FakeTime:
    """clock() and sleep() for the client; `on_sleep[n]` runs during the n-th sleep (1-based)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: dict[int, Callable[[], object]] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        action = self.on_sleep.get(len(self.sleeps))
        if action is not None:
            action()


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHandle]:
    handle = start_api(
        tmp_path,
        monkeypatch,
        scenario=CONTENTION_SCENARIO,
        settings=CONTENTION_SETTINGS,
        clock=ManualClock(0.0),
    )
    yield handle
    handle.stop()


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def client_for(api: ApiHandle, fake: FakeTime, policy: RetryPolicy, **kwargs: object) -> StewardClient:
    return StewardClient(api.base, api.token, retry=policy, sleep=fake.sleep, clock=fake.clock, **kwargs)  # type: ignore[arg-type]


def block_all_but(api: ApiHandle, left_bytes: int) -> str:
    """Reserve everything admissible except `left_bytes`, through the API; returns the reservation id."""
    plain = StewardClient(api.base, api.token, retry=RetryPolicy(max_attempts=1))
    free = api.steward.ledgers.for_gpu(0).available_bytes()
    return str(plain.reserve(0, free - left_bytes, "blocker")["id"])


def release(api: ApiHandle, reservation_id: str) -> Callable[[], object]:
    return lambda: StewardClient(api.base, api.token).release(reservation_id)


def test_exponential_backoff_under_an_injected_clock(api: ApiHandle, fake: FakeTime) -> None:
    blocker = block_all_but(api, 512 * MiB)
    fake.on_sleep[3] = release(api, blocker)
    seen: list[RetryAttempt] = []
    policy = RetryPolicy(max_attempts=5, initial_delay_s=8, multiplier=2, max_delay_s=20, jitter_fraction=0)
    client = client_for(api, fake, policy, on_retry=seen.append)

    result = client.reserve(0, 1 * GiB, "my-server", ttl_s=60)

    assert result["state"] == "granted" and result["bytes"] == 1 * GiB
    assert fake.sleeps == [8, 16, 20]  # 8, 16, then capped at max_delay_s
    assert [a.next_action for a in seen] == ["retry", "retry", "retry"]
    assert [a.attempt for a in seen] == [1, 2, 3]
    assert {a.error for a in seen} == {"insufficient_vram"} and {a.status for a in seen} == {507}
    assert list(client.last_attempts) == seen
    assert [a["delay_s"] for a in result["attempts"]] == [8, 16, 20]


def test_retry_after_is_honoured_over_a_shorter_backoff(api: ApiHandle, fake: FakeTime) -> None:
    blocker = block_all_but(api, 512 * MiB)
    fake.on_sleep[2] = release(api, blocker)
    policy = RetryPolicy(max_attempts=5, initial_delay_s=0.5, multiplier=2, jitter_fraction=0)
    client = client_for(api, fake, policy)

    client.reserve(0, 1 * GiB, "my-server")

    retry_after = client.last_attempts[0].retry_after_s
    assert retry_after is not None and retry_after > 1  # the server asked for more than our 0.5 s / 1 s
    assert fake.sleeps == [retry_after, retry_after]


def test_the_total_time_cap_stops_retrying(api: ApiHandle, fake: FakeTime) -> None:
    block_all_but(api, 512 * MiB)
    policy = RetryPolicy(max_attempts=10, max_total_s=12, initial_delay_s=1, jitter_fraction=0)
    client = client_for(api, fake, policy)

    with pytest.raises(InsufficientVram) as refused:
        client.reserve(0, 1 * GiB, "my-server")

    assert fake.sleeps == [5, 5]  # a third wait would end after 15 s > 12 s
    attempts = refused.value.attempts  # type: ignore[attr-defined]
    assert [a.next_action for a in attempts] == ["retry", "retry", "give_up"]
    assert refused.value.needed_bytes == 1 * GiB


def test_the_attempt_cap_stops_retrying(api: ApiHandle, fake: FakeTime) -> None:
    block_all_but(api, 512 * MiB)
    client = client_for(api, fake, RetryPolicy(max_attempts=2, jitter_fraction=0))
    with pytest.raises(InsufficientVram):
        client.reserve(0, 1 * GiB, "my-server")
    assert len(fake.sleeps) == 1 and len(client.last_attempts) == 2


def test_falls_back_to_a_smaller_variant(api: ApiHandle, fake: FakeTime) -> None:
    api.call("/v1/models/llama-13b/unload", method="POST", body={})
    seen: list[RetryAttempt] = []
    policy = RetryPolicy(max_attempts=2, max_total_s=300, jitter_fraction=0)
    client = client_for(api, fake, policy, variants={"llama-70b": ["llama-13b"]}, on_retry=seen.append)

    result = client.load("llama-70b")

    assert result["requested"] == "llama-70b" and result["loaded"] == "llama-13b"
    assert result["model"]["name"] == "llama-13b" and result["model"]["state"] in ("loading", "resident")
    assert [(a.target, a.next_action) for a in seen] == [("llama-70b", "retry"), ("llama-70b", "fallback")]
    assert seen[-1].next_target == "llama-13b" and seen[0].error == "insufficient_vram"
    assert fake.sleeps == [seen[0].retry_after_s]  # one wait, as long as the server asked


def test_variants_come_from_the_settings_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTime
) -> None:
    settings = dataclasses.replace(
        CONTENTION_SETTINGS,
        models=(ModelConfig(name="llama-70b", path=tmp_path / "none.gguf", gpu=0, variants=("llama-13b",)),),
    )
    api = start_api(
        tmp_path, monkeypatch, scenario=CONTENTION_SCENARIO, settings=settings, clock=ManualClock()
    )
    try:
        listed = {m["name"]: m["variants"] for m in StewardClient(api.base, api.token).models()}
        assert listed == {"llama-70b": ["llama-13b"], "llama-13b": []}
        client = client_for(api, fake, RetryPolicy(max_attempts=1))
        assert client.load("llama-70b")["loaded"] == "llama-13b"
        assert fake.sleeps == []  # one attempt allowed: straight to the variant
    finally:
        api.stop()


def test_non_retriable_errors_are_not_retried(api: ApiHandle, fake: FakeTime) -> None:
    client = client_for(api, fake, RetryPolicy(), variants={"no-such-model": ["llama-13b"]})
    with pytest.raises(ApiError) as bad:
        client.load("no-such-model")
    assert bad.value.status == 400 and bad.value.code == "invalid_input"
    with pytest.raises(ApiError) as huge:
        client.reserve(0, 100 * GiB, "my-server")
    assert huge.value.status == 400
    client.pause()
    with pytest.raises(ApiError) as paused:
        client.load("llama-13b")
    assert paused.value.status == 409 and paused.value.code == "paused"
    assert fake.sleeps == [] and client.last_attempts == ()


def test_a_request_that_can_never_fit_is_not_retried(api: ApiHandle, fake: FakeTime) -> None:
    client = client_for(api, fake, RetryPolicy(max_attempts=5))
    with pytest.raises(InsufficientVram) as refused:
        client.reserve(0, 23 * GiB, "my-server")  # under the 24 GiB total, over total minus headroom
    assert refused.value.retry_after_s is None
    assert fake.sleeps == [] and [a.next_action for a in client.last_attempts] == ["give_up"]


def test_reserve_release_and_allocated(api: ApiHandle) -> None:
    client = StewardClient(api.base, api.token)
    ledger = api.steward.ledgers.for_gpu(0)
    before = ledger.available_bytes()
    first = client.reserve(0, 256 * MiB, "a", ttl_s=60)
    second = client.reserve(0, 256 * MiB, "b", ttl_s=60)
    assert ledger.available_bytes() == before - 512 * MiB
    assert client.release(first["id"])["state"] == "released"
    assert client.allocated(second["id"])["state"] == "allocated"
    assert client.reservation(second["id"])["state"] == "allocated"
    assert ledger.available_bytes() == before - 256 * MiB


def test_reserve_waits_in_the_queue_until_granted(api: ApiHandle) -> None:
    blocker = block_all_but(api, 0)
    timer = threading.Timer(0.3, release(api, blocker))
    timer.start()
    started = time.monotonic()
    result = StewardClient(api.base, api.token).reserve(0, 1 * GiB, "patient", wait_s=20)
    waited = time.monotonic() - started
    timer.join()
    assert result["state"] == "granted" and result["bytes"] == 1 * GiB
    assert 0.25 < waited < 10  # granted when the blocker left, not before, and not at the end of wait_s


def test_a_queue_wait_that_runs_out_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real clock: waits end
    api = start_api(tmp_path, monkeypatch, scenario=CONTENTION_SCENARIO, settings=CONTENTION_SETTINGS)
    try:
        block_all_but(api, 0)
        with pytest.raises(InsufficientVram) as refused:
            StewardClient(api.base, api.token).reserve(0, 1 * GiB, "impatient", wait_s=0.3)
        assert refused.value.details["state"] == "timed_out"
    finally:
        api.stop()
