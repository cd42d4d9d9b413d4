"""Prometheus metrics, served at the API's `GET /metrics`.

The names keep the design study's (`vram_allocation_failures_total{reason}`, `vram_utilization_percent{gpu}`,
`vram_headroom_bytes{gpu}`, `concurrent_allocation_attempts_total`), so its alert rules work unchanged
(resources/prometheus/alerts.yml). Everything that describes the present is read at scrape time from the
engine's latest immutable snapshot, the ledgers and the backend's counters, by one custom collector: between
scrapes the metrics cost nothing. Only what happens once (an eviction, a seal) is counted as it happens, from
the engine's events. A dedicated registry keeps Python's process metrics out, so a scrape shows ours only.
The per-model series are bounded: a model server may list tens of thousands of models, so each server
(holder) gets at most MODEL_SERIES_PER_SERVER series, its largest models, and the rest are summed per GPU
into one `model="(other)"` series. Documented in docs/api.md ("Metrics").
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core import events as ev
from app.core.engine.steward import Steward
from app.core.events import Event
from app.core.gpu.snapshot import GpuState
from app.core.holders import ModelState, ModelStatus

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Freeing VRAM means ending a CUDA context or asking a server to unload: milliseconds to a few seconds.
EVICTION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Streaming a model file into VRAM: disk- or PCIe-bound, from a slow HDD to PCIe 5.
SEAL_BUCKETS_BYTES_PER_S = (1e8, 2.5e8, 5e8, 1e9, 2e9, 4e9, 8e9, 16e9, 32e9, 64e9)

NOT_OTHER_ROLES = frozenset({"self", "managed"})

# A server listing 40,000 models must not make 40,000 series (Prometheus' memory, every scrape's size): the
# largest N of each server's models get their own series, the rest one summed series per GPU.
MODEL_SERIES_PER_SERVER = 20
OTHER_MODELS = "(other)"

# name -> (type, labels, help): the documented metrics (docs/api.md); tests check that a scrape has each one.
DOCUMENTED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "vram_allocation_failures_total": (
        "counter",
        ("reason",),
        "Refused or failed VRAM allocations, by reason (insufficient_vram, cuda_allocation_failed, ...)",
    ),
    "vram_utilization_percent": ("gauge", ("gpu",), "VRAM in use, as a percent of total"),
    "vram_headroom_bytes": (
        "gauge",
        ("gpu",),
        "Free VRAM minus the configured reserve (max(reserved_system_vram, headroom_percent of total)); "
        "negative when the reserve is eaten into",
    ),
    "concurrent_allocation_attempts_total": (
        "counter",
        (),
        "Admission attempts that arrived while another reservation on the same GPU was outstanding",
    ),
    "gpu_evictions_total": ("counter", ("gpu", "reason"), "Evictions of our models, by GPU and reason"),
    "gpu_other_processes_count": (
        "gauge",
        ("gpu",),
        "Processes on the GPU that are neither ours nor managed by us (desktop, games, other)",
    ),
    "gpu_memory_free_bytes": ("gauge", ("gpu",), "Free VRAM (nvidia-smi memory.free)"),
    "gpu_memory_total_bytes": ("gauge", ("gpu",), "Total VRAM (nvidia-smi memory.total)"),
    "nvml_query_errors_total": ("counter", (), "NVML queries that failed"),
    "model_resident": (
        "gauge",
        ("model", "gpu"),
        f"1 when the model is resident in VRAM, else 0; model {OTHER_MODELS}: how many of the models beyond "
        f"each server's largest {MODEL_SERIES_PER_SERVER} are resident",
    ),
    "vram_frozen_bytes": (
        "gauge",
        ("app", "gpu"),
        "VRAM of an app frozen by the driver's checkpoint API: it sits in host RAM until restored",
    ),
    "vram_reservations_outstanding_bytes": (
        "gauge",
        ("gpu",),
        "Bytes admitted but not yet visible in NVML's free VRAM (loads in flight, API reservations)",
    ),
    "vram_reservation_queue_length": ("gauge", ("gpu",), "API reservations waiting in the GPU's queue"),
    "vram_eviction_seconds": ("histogram", (), "Time our holders took to free the models of one eviction"),
    "vram_seal_throughput_bytes_per_second": (
        "histogram",
        (),
        "Throughput of sealing a model into VRAM (read, copy and digest), per load",
    ),
}


def _help(name: str) -> str:
    return DOCUMENTED[name][2]


class StewardMetrics:
    """The engine's metrics in their own registry. Subscribes to the engine's events on creation.

    `queue_lengths`: a callable giving waiting API reservations per GPU (the API's reservation book), or None.
    """

    def __init__(
        self,
        steward: Steward,
        *,
        queue_lengths: Callable[[], Mapping[int, int]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.steward = steward
        self.queue_lengths = queue_lengths
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._evictions: dict[tuple[str, str], int] = {}
        self.eviction_seconds = Histogram(
            "vram_eviction_seconds",
            _help("vram_eviction_seconds"),
            buckets=EVICTION_BUCKETS_S,
            registry=self.registry,
        )
        self.seal_throughput = Histogram(
            "vram_seal_throughput_bytes_per_second",
            _help("vram_seal_throughput_bytes_per_second"),
            buckets=SEAL_BUCKETS_BYTES_PER_S,
            registry=self.registry,
        )
        self.registry.register(_SnapshotCollector(self))
        steward.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        """Count what happens once. Runs on the engine's worker thread: cheap, never raises."""
        if isinstance(event, ev.ModelsEvicted):
            key = (str(event.gpu), event.reason)
            with self._lock:
                self._evictions[key] = self._evictions.get(key, 0) + 1
            if event.duration_s is not None and event.duration_s >= 0:
                self.eviction_seconds.observe(event.duration_s)
        elif isinstance(event, ev.VramSealed) and event.bytes_per_s > 0:
            self.seal_throughput.observe(event.bytes_per_s)

    def evictions(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._evictions)

    def render(self) -> bytes:
        """The text exposition format (CONTENT_TYPE) of every metric, as of now."""
        return bytes(generate_latest(self.registry))


class _SnapshotCollector(Collector):
    """Reads the latest snapshot, the ledgers and the backend's counters when Prometheus scrapes."""

    def __init__(self, metrics: StewardMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        steward = self._metrics.steward
        snapshot = steward.snapshot
        settings = steward.settings
        families: dict[str, Any] = {}
        for name, (kind, labels, help_text) in DOCUMENTED.items():
            if kind == "counter":
                families[name] = CounterMetricFamily(name, help_text, labels=labels)
            elif kind == "gauge":
                families[name] = GaugeMetricFamily(name, help_text, labels=labels)

        ledgers = steward.ledgers
        for reason, count in sorted(ledgers.allocation_failures_total.items()):
            families["vram_allocation_failures_total"].add_metric([reason], count)
        families["concurrent_allocation_attempts_total"].add_metric(
            [], ledgers.concurrent_allocation_attempts_total
        )
        families["nvml_query_errors_total"].add_metric([], getattr(steward.backend, "query_errors_total", 0))
        for (gpu_label, reason), count in sorted(self._metrics.evictions().items()):
            families["gpu_evictions_total"].add_metric([gpu_label, reason], count)
        for index in ledgers:
            families["vram_reservations_outstanding_bytes"].add_metric(
                [str(index)], ledgers[index].outstanding_bytes()
            )
        queue_lengths = self._metrics.queue_lengths() if self._metrics.queue_lengths else {}
        for index in sorted(set(queue_lengths) | set(ledgers)):
            families["vram_reservation_queue_length"].add_metric([str(index)], queue_lengths.get(index, 0))

        if snapshot is not None:
            roles = snapshot.roles
            for gpu in snapshot.telemetry.gpus:
                if gpu.state != GpuState.OK or gpu.total_bytes <= 0:
                    continue  # a lost GPU has no trustworthy numbers: leave its series absent
                label = [str(gpu.index)]
                families["gpu_memory_total_bytes"].add_metric(label, gpu.total_bytes)
                families["gpu_memory_free_bytes"].add_metric(label, gpu.free_bytes)
                families["vram_utilization_percent"].add_metric(
                    label, 100.0 * gpu.used_bytes / gpu.total_bytes
                )
                families["vram_headroom_bytes"].add_metric(
                    label, gpu.free_bytes - settings.headroom_bytes(gpu.total_bytes)
                )
                others = sum(1 for p in gpu.processes if roles.get((gpu.index, p.pid)) not in NOT_OTHER_ROLES)
                families["gpu_other_processes_count"].add_metric(label, others)
            for model_name, gpu_label, value in model_series(snapshot.models):
                families["model_resident"].add_metric([model_name, gpu_label], value)
            for model in snapshot.models:  # one series per configured app: a handful, never thousands
                if model.state == ModelState.FROZEN:
                    families["vram_frozen_bytes"].add_metric(
                        [model.name, str(model.gpu)], model.size_bytes or 0
                    )
        yield from families.values()


def model_series(
    models: Sequence[ModelStatus], per_server: int = MODEL_SERIES_PER_SERVER
) -> list[tuple[str, str, int]]:
    """(model, gpu, resident) for `model_resident`: each holder's `per_server` largest models (by size, an
    unknown size counting as 0, then by name), in the holder's order; the others summed per GPU into one
    OTHER_MODELS series (how many of them are resident), present whenever some model was left out."""
    by_holder: dict[str, list[ModelStatus]] = {}
    for model in models:
        by_holder.setdefault(model.holder, []).append(model)
    series: list[tuple[str, str, int]] = []
    others: dict[int, int] = {}
    for listed in by_holder.values():
        kept = listed
        if len(listed) > per_server:
            largest = heapq.nsmallest(
                per_server, range(len(listed)), key=lambda i: (-(listed[i].size_bytes or 0), listed[i].name)
            )
            chosen = set(largest)
            kept = [m for i, m in enumerate(listed) if i in chosen]
            for i, model in enumerate(listed):
                if i not in chosen:
                    others[model.gpu] = others.get(model.gpu, 0) + _resident(model)
        series.extend((m.name, str(m.gpu), _resident(m)) for m in kept)
    series.extend((OTHER_MODELS, str(gpu), count) for gpu, count in sorted(others.items()))
    return series


def _resident(model: ModelStatus) -> int:
    return 1 if model.state == ModelState.RESIDENT else 0
