"""Replay: the whole engine (policy, simulated residency, scenario game signals, the exclusive-app list over
the scenario's processes) on simulated time, as fast as it can run. Users try settings with it before
trusting them; tests and the documentation use it.

Besides our events it reports the outcome for the user, per tick where anything happens: the free VRAM of
each GPU after the tick's actions, and which other processes were refused memory (the simulator knows
what each process wanted and what it could get).

It assembles a runtime through app.core.wiring and words events with app.core.notify, so it sits beside the
wiring rather than in app/core/engine (which imports neither: see the import-linter contracts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.events import Event
from app.core.gpu.simulated import FailedAllocation, ManualClock, SimulatedBackend
from app.core.settings import Settings
from app.core.units import format_bytes

SKIPPED_KINDS = frozenset({"LoadProgress"})  # routine progress: not something that "happens" to the user


@dataclass(frozen=True)
class Refusal:
    """Another process wanted more VRAM than the GPU could give it."""

    gpu: int
    pid: int
    name: str
    wanted_bytes: int
    got_bytes: int  # the most it could hold

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}) refused memory on GPU {self.gpu}: short by "
            f"{format_bytes(self.wanted_bytes - self.got_bytes)} "
            f"of the {format_bytes(self.wanted_bytes)} it wants"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "pid": self.pid,
            "name": self.name,
            "wanted_bytes": self.wanted_bytes,
            "got_bytes": self.got_bytes,
        }


@dataclass(frozen=True)
class TickReport:
    """One tick where something happened: our events, then the outcome after the tick's actions."""

    at: float
    events: tuple[Event, ...]  # what we did or saw in this tick
    free_bytes: tuple[tuple[int, int], ...]  # (gpu, free VRAM as NVML would report it) after the tick
    refused: tuple[Refusal, ...]  # other processes refused memory in this tick (none: nobody lacked VRAM)

    def outcome(self) -> str:
        free = ", ".join(f"GPU {gpu}: {format_bytes(n)} free" for gpu, n in self.free_bytes) or "no GPU"
        refused = "; ".join(r.describe() for r in self.refused) or "no other process refused memory"
        return f"{free}; {refused}"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "Outcome",
            "at": self.at,
            "gpus": [{"index": gpu, "free_bytes": n} for gpu, n in self.free_bytes],
            "refused": [r.to_json() for r in self.refused],
        }


@dataclass(frozen=True)
class ReplayResult:
    events: tuple[Event, ...]
    ticks: int
    until_s: float
    final_state: str
    reports: tuple[TickReport, ...] = ()
    failed_allocations: tuple[FailedAllocation, ...] = ()  # every refusal the simulator recorded
    process_names: tuple[tuple[int, str], ...] = ()  # pid -> name, for the summary

    def refusal_summary(self) -> str:
        """For the last line: which other processes lacked VRAM during the whole replay, and how badly."""
        if not self.failed_allocations:
            return "no other process was refused memory"
        names = dict(self.process_names)
        worst: dict[tuple[int, int], tuple[float, int]] = {}  # (gpu, pid) -> (first at, largest shortfall)
        for f in self.failed_allocations:
            first, short = worst.get((f.gpu, f.pid), (f.at, 0))
            worst[(f.gpu, f.pid)] = (min(first, f.at), max(short, f.wanted_bytes - f.free_bytes))
        return "other processes refused memory: " + "; ".join(
            f"{names.get(pid, 'pid ' + str(pid))} (pid {pid}) on GPU {gpu} from {first:.2f} s, "
            f"short by up to {format_bytes(short)}"
            for (gpu, pid), (first, short) in sorted(worst.items(), key=lambda item: item[1][0])
        )


def replay(
    scenario: str | Path,
    settings: Settings | None = None,
    *,
    until_s: float | None = None,
    max_step_s: float | None = None,
) -> ReplayResult:
    """Run the engine on the scenario from t=0 to `until_s` (default: the scenario's duration, else 600 s)."""
    from app.core.wiring import build_runtime

    settings = settings or Settings()
    clock = ManualClock()
    runtime = build_runtime(settings, simulate=scenario, clock=clock, with_api=False, audit=False)
    steward = runtime.steward
    backend = runtime.backend
    assert isinstance(backend, SimulatedBackend)  # build_runtime(simulate=...) makes one
    collected: list[Event] = []
    steward.subscribe(collected.append)
    end = until_s if until_s is not None else (backend.scenario.duration_s or 600.0)
    ticks = 0
    state = "idle"
    reports: list[TickReport] = []
    names: dict[int, str] = {}
    short_before: frozenset[tuple[int, int]] = frozenset()
    try:
        while clock.now_s <= end:
            seen_events, seen_failures = len(collected), len(backend.failed_allocations)
            snapshot = steward.tick()
            ticks += 1
            state = snapshot.state
            report = _report(
                backend,
                clock.now_s,
                tuple(collected[seen_events:]),
                backend.failed_allocations[seen_failures:],
                names,
            )
            short_now = frozenset((r.gpu, r.pid) for r in report.refused)
            if any(e.kind not in SKIPPED_KINDS for e in report.events) or short_now != short_before:
                reports.append(report)
            short_before = short_now
            step = snapshot.next_poll_s
            if max_step_s is not None:
                step = min(step, max_step_s)
            clock.advance(max(step, 1e-3))
    finally:
        steward.shutdown()
    return ReplayResult(
        events=tuple(collected),
        ticks=ticks,
        until_s=end,
        final_state=state,
        reports=tuple(reports),
        failed_allocations=tuple(backend.failed_allocations),
        process_names=tuple(sorted(names.items())),
    )


def _report(
    backend: SimulatedBackend,
    at_s: float,
    events: tuple[Event, ...],
    recorded: list[FailedAllocation],
    names: dict[int, str],
) -> TickReport:
    """The outcome after a tick: free VRAM now, and the other processes that lacked VRAM in the tick (as the
    engine's own sample recorded them before it acted, or still now, after its actions)."""
    telemetry = backend.sample_at(at_s, record=False)  # looking must not add to failed_allocations
    for p in backend.processes(at_s):
        names[p.pid] = p.name
    short: dict[tuple[int, int], FailedAllocation] = {(f.gpu, f.pid): f for f in recorded}
    short.update({(f.gpu, f.pid): f for f in backend.shortfalls(at_s)})
    refused = tuple(
        Refusal(
            gpu=f.gpu,
            pid=f.pid,
            name=names.get(f.pid, f"pid {f.pid}"),
            wanted_bytes=f.wanted_bytes,
            got_bytes=f.free_bytes,
        )
        for _, f in sorted(short.items())
    )
    return TickReport(
        at=at_s,
        events=events,
        free_bytes=tuple((g.index, g.free_bytes) for g in telemetry.gpus),
        refused=refused,
    )


def iter_lines(result: ReplayResult, *, as_json: bool, skip_progress: bool = True) -> Iterator[str]:
    """Per tick where anything happens: one line per event, then the outcome (free VRAM, refusals)."""
    import json

    from app.core.notify.messages import describe

    reports = result.reports
    if not reports:  # a result made without reports (an older caller): the events alone
        reports = tuple(TickReport(e.at, (e,), (), ()) for e in result.events)
    for report in reports:
        for event in report.events:
            if skip_progress and event.kind in SKIPPED_KINDS:
                continue
            if as_json:
                yield json.dumps(event.to_json(), sort_keys=True)
            else:
                yield f"{event.at:9.2f}s  {event.kind:<22} {describe(event)}"
        if not report.free_bytes and not report.refused:
            continue
        if as_json:
            yield json.dumps(report.to_json(), sort_keys=True)
        else:
            yield f"{report.at:9.2f}s  {'-> outcome':<22} {report.outcome()}"
