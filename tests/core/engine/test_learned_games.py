"""Evict only what a game needs: the first time a game runs, everything goes; VRAM Steward remembers the peak
its processes reached, and the next time frees the lowest-priority models until free VRAM covers that peak
plus the headroom. What was learned is in the status document, in a file written atomically, and can be
forgotten."""

from __future__ import annotations

import json
from pathlib import Path

from app.core import events as ev
from app.core.config import Settings
from app.core.engine.game_peaks import GamePeaks
from app.core.engine.steward import Steward
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.residency.ledger import Ledgers
from app.core.residency.simulated_holder import SimulatedHolder, SimulatedModel
from app.core.units import GiB
from tests.fixtures.scenario_text import game_run, gpu_table

TWO_RUNS = (
    'description = "a 24 GiB card with two models; the same game runs twice"\n'
    "duration_s = 600\n"
    + gpu_table(0, "24 GiB")
    + """
[[processes]]
pid = 1201
name = "Xorg"
used = "300 MiB"
kind = "graphics"
"""
    + game_run(10.0, 11.0, 40.0, 41.0)
    + game_run(150.0, 151.0, 180.0, 181.0)
)

CHAT, EMBED = "chat-8b", "embed-4b"


def run(tmp_path: Path, until_s: float = 170.0) -> tuple[Steward, list[ev.Event], SimulatedBackend]:
    clock = ManualClock()
    sim = SimulatedBackend(parse_scenario(TWO_RUNS, name="two-runs"), clock=clock)
    settings = Settings()
    ledgers = Ledgers(settings.headroom_bytes, clock=clock)
    models = [SimulatedModel(CHAT, 0, 8 * GiB, priority=1), SimulatedModel(EMBED, 0, 4 * GiB, priority=0)]
    holder = SimulatedHolder(sim, models, ledgers, clock=clock)
    peaks = GamePeaks(tmp_path / "games.json", wall_clock=lambda: 1_750_000_000.0)
    steward = Steward(settings, sim, [holder], ledgers=ledgers, clock=clock, game_peaks=peaks)
    from app.core.signals.scenario import ScenarioSignals

    steward.signals = ScenarioSignals(sim)
    events: list[ev.Event] = []
    steward.subscribe(events.append)
    snapshot = steward.tick()
    while clock() < until_s:
        clock.advance(snapshot.next_poll_s)
        snapshot = steward.tick()
    return steward, events, sim


def test_the_second_run_frees_only_what_the_game_needs(tmp_path: Path) -> None:
    steward, events, sim = run(tmp_path)
    evictions = [e for e in events if isinstance(e, ev.ModelsEvicted)]
    first, second = evictions[0], evictions[1]
    assert first.at < 20 and set(first.models) == {CHAT, EMBED}, "the first time, everything goes"
    assert second.at >= 150 and second.models == (EMBED,), "the next time, only the low-priority model"
    learned = json.loads((tmp_path / "games.json").read_text())["games"]
    assert learned == {
        "hades ii": {"name": "Hades II", "peak_bytes": 12 * GiB, "runs": 1, "last_seen": 1_750_000_000.0}
    }
    snapshot = steward.snapshot
    assert snapshot is not None
    status = snapshot.to_status()
    assert status["games_learned"][0]["key"] == "hades ii"
    assert status["games_learned"][0]["peak_bytes"] == 12 * GiB
    # the game reached its peak beside our other model: nobody was refused memory, nothing more went
    assert [m.state for m in snapshot.models if m.name == CHAT] == ["resident"]
    assert not sim.failed_allocations
    assert len(evictions) == 2
    steward.shutdown()


def test_a_forgotten_game_gets_everything_again(tmp_path: Path) -> None:
    GamePeaks(tmp_path / "games.json").record("hades ii", "Hades II", 12 * GiB)
    assert GamePeaks(tmp_path / "games.json").forget("hades ii")
    steward, events, _sim = run(tmp_path, until_s=20.0)
    (first,) = [e for e in events if isinstance(e, ev.ModelsEvicted)]
    assert set(first.models) == {CHAT, EMBED}
    steward.shutdown()


def test_a_broken_file_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "games.json"
    path.write_text("{ not json")
    peaks = GamePeaks(path)
    assert peaks.load() == {}
    assert (tmp_path / "games.json.broken").read_text() == "{ not json"
    peaks.record("steam:1145360", "Hades", 6 * GiB)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert peaks.load()["steam:1145360"].peak_bytes == 6 * GiB


def test_the_games_command_lists_and_forgets(tmp_path: Path, monkeypatch: object) -> None:
    import subprocess
    import sys

    env = {"VRAM_STEWARD_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    GamePeaks(tmp_path / "games.json").record("steam:1091500", "Cyberpunk 2077", 10 * GiB)

    def games(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "games", *args], capture_output=True, text=True, env=env, timeout=60
        )

    listed = games()
    assert listed.returncode == 0 and "steam:1091500" in listed.stdout and "10.0 GiB" in listed.stdout
    assert json.loads(games("--json").stdout)[0]["peak_bytes"] == 10 * GiB
    unknown = games("--forget", "steam:1")
    assert unknown.returncode == 1 and "steam:1091500" in unknown.stdout
    assert games("--forget", "steam:1091500").returncode == 0
    assert json.loads(games("--json").stdout) == []
