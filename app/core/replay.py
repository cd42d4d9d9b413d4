"""Replay: the whole engine (policy, simulated residency, scenario game signals) on simulated time, as fast
as it can run. Users try settings with it before trusting them; tests and the documentation use it.

It assembles a runtime through app.core.wiring and words events with app.core.notify, so it sits beside the
wiring rather than in app/core/engine (which imports neither: see the import-linter contracts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.core.events import Event
from app.core.gpu.simulated import ManualClock
from app.core.settings import Settings


@dataclass(frozen=True)
class ReplayResult:
    events: tuple[Event, ...]
    ticks: int
    until_s: float
    final_state: str


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
    collected: list[Event] = []
    steward.subscribe(collected.append)
    duration = getattr(getattr(runtime.backend, "scenario", None), "duration_s", None)
    end = until_s if until_s is not None else (duration or 600.0)
    ticks = 0
    state = "idle"
    try:
        while clock.now_s <= end:
            snapshot = steward.tick()
            ticks += 1
            state = snapshot.state
            step = snapshot.next_poll_s
            if max_step_s is not None:
                step = min(step, max_step_s)
            clock.advance(max(step, 1e-3))
    finally:
        steward.shutdown()
    return ReplayResult(events=tuple(collected), ticks=ticks, until_s=end, final_state=state)


def iter_lines(result: ReplayResult, *, as_json: bool, skip_progress: bool = True) -> Iterator[str]:
    import json

    from app.core.notify.messages import describe

    for event in result.events:
        if skip_progress and event.kind == "LoadProgress":
            continue
        if as_json:
            yield json.dumps(event.to_json(), sort_keys=True)
        else:
            yield f"{event.at:9.2f}s  {event.kind:<22} {describe(event)}"
