"""Prometheus metrics: every documented metric in a scrape parsed by prometheus-client's own parser, values
read from the engine at scrape time, evictions and seals counted from events, and /metrics over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core import events as ev
from app.core.api.metrics import DOCUMENTED, StewardMetrics
from app.core.config import Settings
from app.core.gpu.simulated import ManualClock
from app.core.units import GiB
from app.core.wiring import Runtime, build_runtime
from tests.fixtures.api_server import start_api

MODEL = "llama-3.1-8b-instruct-q8_0"


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


@pytest.fixture
def engine() -> Iterator[tuple[Runtime, ManualClock, StewardMetrics]]:
    clock = ManualClock()
    runtime = build_runtime(Settings(), simulate="game-launch", clock=clock, with_api=False, audit=False)
    metrics = StewardMetrics(runtime.steward)
    yield runtime, clock, metrics
    runtime.steward.shutdown()


def run_until(runtime: Runtime, clock: ManualClock, until_s: float) -> None:
    while clock.now_s <= until_s:
        snapshot = runtime.steward.tick()
        clock.advance(min(snapshot.next_poll_s, 1.0))


def test_every_documented_metric_is_in_a_scrape(
    engine: tuple[Runtime, ManualClock, StewardMetrics],
) -> None:
    runtime, clock, metrics = engine
    run_until(runtime, clock, 5)
    found = families(metrics.render().decode())
    for name, (kind, _, _) in DOCUMENTED.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert found.get(family) == kind, f"{name} missing or not a {kind}: {found.get(family)}"


def test_gauges_are_read_from_the_latest_snapshot(
    engine: tuple[Runtime, ManualClock, StewardMetrics],
) -> None:
    runtime, clock, metrics = engine
    run_until(runtime, clock, 5)  # the 8 GiB model is resident by now
    snapshot = runtime.steward.snapshot
    gpu = snapshot.telemetry.gpus[0]
    values = scrape(metrics.render().decode())
    g0 = (("gpu", "0"),)
    assert values[("gpu_memory_total_bytes", g0)] == 12 * GiB
    assert values[("gpu_memory_free_bytes", g0)] == gpu.free_bytes
    assert values[("vram_headroom_bytes", g0)] == gpu.free_bytes - Settings().headroom_bytes(12 * GiB)
    assert values[("vram_utilization_percent", g0)] == pytest.approx(100 * gpu.used_bytes / gpu.total_bytes)
    assert values[("gpu_other_processes_count", g0)] == 3  # Xorg, gnome-shell, firefox; not our host
    assert values[("model_resident", (("gpu", "0"), ("model", MODEL)))] == 1
    assert values[("nvml_query_errors_total", ())] == 0

    run_until(runtime, clock, 29)  # the game ramps up; nothing was told to the metrics in between
    later = scrape(metrics.render().decode())
    assert later[("gpu_memory_free_bytes", g0)] == runtime.steward.snapshot.telemetry.gpus[0].free_bytes
    assert later[("gpu_memory_free_bytes", g0)] != values[("gpu_memory_free_bytes", g0)]
    assert later[("model_resident", (("gpu", "0"), ("model", MODEL)))] == 0  # evicted for the game
    assert later[("gpu_other_processes_count", g0)] == 4  # and the game itself


def test_evictions_are_counted_by_gpu_and_reason_with_their_latency(
    engine: tuple[Runtime, ManualClock, StewardMetrics],
) -> None:
    runtime, clock, metrics = engine
    run_until(runtime, clock, 25)
    values = scrape(metrics.render().decode())
    assert values[("gpu_evictions_total", (("gpu", "0"), ("reason", "game")))] == 1
    assert values[("vram_eviction_seconds_count", ())] == 1
    assert values[("vram_eviction_seconds_bucket", (("le", "0.005"),))] == 1  # simulated frees are instant


def test_seal_throughput_is_a_histogram_of_bytes_per_second(
    engine: tuple[Runtime, ManualClock, StewardMetrics],
) -> None:
    _, _, metrics = engine
    for rate in (0.3e9, 3e9, 3e9):
        metrics.on_event(
            ev.VramSealed(
                at=0.0, model=MODEL, gpu=0, bytes=8 * GiB, digest="x", seconds=1.0, bytes_per_s=rate
            )
        )
    values = scrape(metrics.render().decode())
    assert values[("vram_seal_throughput_bytes_per_second_count", ())] == 3
    assert values[("vram_seal_throughput_bytes_per_second_bucket", (("le", "5e+08"),))] == 1
    assert values[("vram_seal_throughput_bytes_per_second_bucket", (("le", "4e+09"),))] == 3
    assert values[("vram_seal_throughput_bytes_per_second_sum", ())] == pytest.approx(6.3e9)


def test_backend_query_errors_are_read_at_scrape_time(
    engine: tuple[Runtime, ManualClock, StewardMetrics],
) -> None:
    runtime, clock, metrics = engine
    run_until(runtime, clock, 1)
    runtime.backend.query_errors_total = 7  # type: ignore[attr-defined]  # NvmlBackend's counter
    assert scrape(metrics.render().decode())[("nvml_query_errors_total", ())] == 7


def test_metrics_over_http_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = start_api(tmp_path, monkeypatch, clock=ManualClock(0.0))
    try:
        free = api.steward.ledgers.for_gpu(0).available_bytes()
        status, _, _ = api.call(
            "/v1/reservations", method="POST", body={"gpu": 0, "bytes": free + 1, "holder": "x"}
        )
        assert status == 507
        api.call("/v1/reservations", method="POST", body={"gpu": 0, "bytes": 1, "holder": "x", "wait_s": 1})
        status, headers, text = api.call("/metrics", token=False)
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        values = scrape(text)
        assert values[("vram_allocation_failures_total", (("reason", "insufficient_vram"),))] == 1
        # the model's load is outstanding (time stands still), so both reserve() calls were concurrent
        assert values[("concurrent_allocation_attempts_total", ())] == 2
        assert values[("vram_reservations_outstanding_bytes", (("gpu", "0"),))] == 8 * GiB + 1
        assert values[("vram_reservation_queue_length", (("gpu", "0"),))] == 0
        assert set(families(text)) >= {n.removesuffix("_total") for n in DOCUMENTED}
    finally:
        api.stop()


def test_a_frozen_app_shows_what_sits_in_ram(engine: tuple[Runtime, ManualClock, StewardMetrics]) -> None:
    import dataclasses

    from app.core.holders import ModelState, ModelStatus

    runtime, clock, metrics = engine
    run_until(runtime, clock, 2)
    frozen = ModelStatus(
        name="ComfyUI", gpu=0, size_bytes=12 * GiB, state=ModelState.FROZEN, holder="freeze", priority=1000
    )
    snapshot = runtime.steward.snapshot
    runtime.steward._snapshot = dataclasses.replace(snapshot, models=(*snapshot.models, frozen))
    values = scrape(metrics.render().decode())
    assert values[("vram_frozen_bytes", (("app", "ComfyUI"), ("gpu", "0")))] == 12 * GiB
    assert not [k for k in values if k[0] == "vram_frozen_bytes" and ("app", "ComfyUI") not in k[1]]
