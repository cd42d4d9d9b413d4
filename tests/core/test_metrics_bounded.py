"""The per-model series are bounded per model server: a server listing 40,000 models gives its 20 largest a
series each and the rest one summed `model="(other)"` series per GPU, so a scrape stays small (issue 17). Read
over HTTP from the real API on loopback, parsed by prometheus-client's parser and, where installed, linted by
`promtool check metrics`."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.core.api.metrics import MODEL_SERIES_PER_SERVER, OTHER_MODELS, model_series
from app.core.events import Event
from app.core.gpu.simulated import ManualClock
from app.core.holders import HolderRole, ModelState, ModelStatus, VerifyUnsupported
from app.core.settings import Settings
from app.core.units import GiB, MiB
from tests.core.test_metrics import scrape
from tests.fixtures.api_server import start_api

MODELS = 40_000
PROMTOOL = shutil.which("promtool")
# the design study's name (its alert rules use it), which promtool's linter would rather see without "_count"
KNOWN_LINT = "gpu_other_processes_count non-histogram and non-summary metrics should not have"


def listing(holder: str, count: int, *, gpu: int = 0, resident_every: int = 7) -> tuple[ModelStatus, ...]:
    """`count` models, model-i of (i + 1) MiB (so the largest are the last), every `resident_every`-th one
    resident."""
    return tuple(
        ModelStatus(
            name=f"{holder}-model-{i}",
            gpu=gpu,
            size_bytes=(i + 1) * MiB,
            state=ModelState.RESIDENT if i % resident_every == 0 else ModelState.UNLOADED,
            holder=holder,
        )
        for i in range(count)
    )


class ListingServer:
    """A model server that lists many models and does nothing else (the engine's Holder contract)."""

    role = HolderRole.MANAGED

    def __init__(self, name: str, models: Sequence[ModelStatus]) -> None:
        self.name = name
        self._models = tuple(models)

    def models(self) -> Sequence[ModelStatus]:
        return self._models

    def pids(self) -> set[int]:
        return set()

    def start_load(self, model: str) -> None:
        pass

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]:
        return ()

    def unload(self, model: str) -> Sequence[Event]:
        return ()

    def poll(self) -> Sequence[Event]:
        return ()

    def set_hold(self, reason: str | None) -> None:
        pass

    def verify(self, model: str) -> concurrent.futures.Future[Event]:
        raise VerifyUnsupported("a listing only")

    def update_settings(self, settings: Settings) -> None:
        pass

    def close(self) -> Sequence[Event]:
        return ()


def test_a_server_listing_40000_models_gives_its_20_largest_and_one_summed_series() -> None:
    models = listing("big", MODELS)
    series = model_series(models)
    assert len(series) == MODEL_SERIES_PER_SERVER + 1
    named = {name for name, _, _ in series if name != OTHER_MODELS}
    assert named == {f"big-model-{i}" for i in range(MODELS - MODEL_SERIES_PER_SERVER, MODELS)}  # the largest
    (other,) = [s for s in series if s[0] == OTHER_MODELS]
    resident_left_out = sum(1 for i in range(MODELS - MODEL_SERIES_PER_SERVER) if i % 7 == 0)
    assert other == (OTHER_MODELS, "0", resident_left_out)


def test_few_models_keep_their_own_series_and_each_server_is_bounded_apart() -> None:
    small = listing("small", 3, gpu=1)
    assert model_series(small) == [(m.name, "1", 1 if i == 0 else 0) for i, m in enumerate(small)]
    assert not [s for s in model_series(small) if s[0] == OTHER_MODELS]
    # two servers: each keeps its own 20 (a big one does not crowd a small one out); overflow summed per GPU
    unknown_size = ModelStatus(name="no-size", gpu=0, size_bytes=None, state=ModelState.RESIDENT, holder="a")
    series = model_series((*listing("a", 30), unknown_size, *listing("b", 25, gpu=1), *small))
    names = [name for name, _, _ in series]
    assert len(names) == 20 + 20 + 3 + 2
    assert "no-size" not in names  # an unknown size counts as 0: left out first
    others = {gpu: value for name, gpu, value in series if name == OTHER_MODELS}
    assert others == {"0": 2 + 1, "1": 1}  # a: model-0 and model-7 + no-size; b: model-0


def test_metrics_over_http_stay_small_with_a_server_listing_40000_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = start_api(tmp_path, monkeypatch, clock=ManualClock(0.0))
    try:
        _, _, before = api.call("/metrics", token=False)
        api.steward.holders.append(ListingServer("big", listing("big", MODELS)))
        api.wait_ticks(3)
        status, _, text = api.call("/metrics", token=False)
        assert status == 200
        values = scrape(text)
        resident = {labels: v for (name, labels), v in values.items() if name == "model_resident"}
        big = [labels for labels in resident if dict(labels)["model"].startswith("big-")]
        assert len(big) == MODEL_SERIES_PER_SERVER
        assert resident[(("gpu", "0"), ("model", OTHER_MODELS))] == sum(
            1 for i in range(MODELS - MODEL_SERIES_PER_SERVER) if i % 7 == 0
        )
        assert len(text) < len(before) + 4096  # 21 more lines, not 40,000 (about 2.7 MB)
        if PROMTOOL is not None:
            lint = subprocess.run(
                [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
            )
            problems = [line for line in lint.stderr.splitlines() if line and not line.startswith(KNOWN_LINT)]
            assert lint.returncode in (0, 3) and not problems, lint.stdout + lint.stderr
    finally:
        api.stop()


def test_big_models_are_counted_in_gib_not_lost_in_the_summed_series() -> None:
    """A server whose few big models come last in its listing still names them (the order is by size)."""
    huge = ModelStatus(
        name="llama-405b", gpu=0, size_bytes=200 * GiB, state=ModelState.RESIDENT, holder="big"
    )
    series = model_series((*listing("big", 100), huge))
    assert ("llama-405b", "0", 1) in series
