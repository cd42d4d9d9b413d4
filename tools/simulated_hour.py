"""An hour of a simulated evening for the dashboard's timeline (tools/ui_screenshots.py): the real engine on a
scenario (desktop at rest, our 8 GiB model, a video call in the browser, then a game for 25 minutes), run on a
manual clock one second at a time, its snapshots presented as the tray app presents them, and its
evictions and resumes marked as the tray app marks them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.core import events as ev
from app.core.config import Settings
from app.core.gpu.scenario import shipped_scenarios_dir
from app.core.gpu.simulated import ManualClock
from app.ui.presenter import GpuView, present
from app.ui.timeline import TimelineHistory

HOUR_S = 3600
EVENING = """
[[models]]
name = "llama-3.1-8b-instruct-q8_0"
size = "8 GiB"

[[timeline]]
at = 700.0
event = "process_resize"
pid = 2310
to = "900 MiB"
duration_s = 20.0

[[timeline]]
at = 1500.0
event = "process_resize"
pid = 2310
to = "300 MiB"
duration_s = 5.0

[[timeline]]
at = 1800.0
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242

[[timeline]]
at = 1802.0
event = "process_start"
pid = 4242
name = "Cyberpunk2077.exe"
used = "300 MiB"
kind = "graphics"

[[timeline]]
at = 1802.0
event = "process_resize"
pid = 4242
to = "9 GiB"
duration_s = 40.0

[[timeline]]
at = 3300.0
event = "process_exit"
pid = 4242

[[timeline]]
at = 3301.0
event = "game_signal_end"
name = "Cyberpunk 2077"
"""


@dataclass(frozen=True)
class Frame:
    at_s: float
    gpus: tuple[GpuView, ...]
    marks: tuple[tuple[int, str], ...]  # (gpu, "evicted" | "resumed")


def evening_scenario(folder: Path) -> Path:
    text = (shipped_scenarios_dir() / "desktop-idle.toml").read_text(encoding="utf-8")
    text = text.replace("duration_s = 600", f"duration_s = {HOUR_S + 60}") + EVENING
    path = folder / "evening.toml"
    path.write_text(text, encoding="utf-8")
    return path


def simulated_hour(settings: Settings | None = None) -> list[Frame]:
    """One frame a second for an hour of the evening scenario."""
    from app.core.wiring import build_runtime

    settings = settings or Settings()
    clock = ManualClock()
    with tempfile.TemporaryDirectory(prefix="vram-steward-evening-") as folder:
        runtime = build_runtime(
            settings, simulate=evening_scenario(Path(folder)), clock=clock, with_api=False, audit=False
        )
        events: list[ev.Event] = []
        runtime.steward.subscribe(events.append)
        frames = []
        try:
            for second in range(HOUR_S):
                seen = len(events)
                snapshot = runtime.steward.tick()
                marks = tuple(
                    (e.gpu, "evicted" if isinstance(e, ev.ModelsEvicted) else "resumed")
                    for e in events[seen:]
                    if isinstance(e, (ev.ModelsEvicted, ev.Resumed))
                )
                frames.append(Frame(float(second), present(snapshot, settings).gpus, marks))
                clock.advance(1.0)
        finally:
            runtime.steward.shutdown()
    return frames


def fill_history(history: TimelineHistory, frames: list[Frame]) -> None:
    """Put the frames in `history` as the last hour before its clock's now (what was there is dropped)."""
    history.samples.clear()
    history.day_samples.clear()
    history.markers.clear()
    real_clock: Callable[[], float] = history.clock
    end = real_clock()
    start = end - frames[-1].at_s
    try:
        for frame in frames:
            history.clock = lambda at=frame.at_s: start + at
            history.add(frame.gpus)
            for gpu, kind in frame.marks:
                history.mark(gpu, kind)
    finally:
        history.clock = real_clock
