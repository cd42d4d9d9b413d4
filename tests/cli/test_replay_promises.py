"""The policy's promises, each tried as a user would: a situation written as a scenario file and run through
`vram-steward replay --json` (a real subprocess), reading our actions and the outcome (free VRAM, who was
refused memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.scenario_text import game_run, gpu_table


def replay(tmp_path: Path, scenario: str, until_s: float) -> list[dict[str, Any]]:
    path = tmp_path / "situation.toml"
    path.write_text(scenario)
    env = {
        **os.environ,
        "VRAM_STEWARD_CONFIG_DIR": str(tmp_path / "config"),
        "VRAM_STEWARD_STATE_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "app", "replay", str(path), "--json", "--until", str(until_s)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def of(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == kind]


def test_a_browser_big_at_start_and_growing_never_evicts(tmp_path: Path) -> None:
    scenario = (
        'description = "firefox at 1.3 GiB at start, growing 1.5 GiB; free VRAM stays above the headroom"\n'
        "duration_s = 600\n"
        + gpu_table(0, "12 GiB")
        + """
[[processes]]
pid = 2310
name = "firefox"
used = "1300 MiB"
kind = "graphics"

[[models]]
name = "chat-4b"
size = "4 GiB"

[[timeline]]
at = 30.0
event = "process_resize"
pid = 2310
to = "2800 MiB"
duration_s = 60.0
"""
    )
    records = replay(tmp_path, scenario, 300)
    assert of(records, "ModelsEvicted") == []
    assert all(not o["refused"] for o in of(records, "Outcome"))


def test_a_game_on_gpu1_whose_process_exits_before_its_signal_frees_nothing_on_gpu0(tmp_path: Path) -> None:
    scenario = (
        'description = "two GPUs; the game runs on GPU 1 and exits a second before GameMode says so"\n'
        "duration_s = 600\n"
        + gpu_table(0, "24 GiB")
        + gpu_table(1, "24 GiB")
        + """
[[models]]
name = "chat-8b"
size = "8 GiB"
gpu = 0

[[models]]
name = "coder-8b"
size = "8 GiB"
gpu = 1

[[timeline]]
at = 10.0
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242

[[timeline]]
at = 11.0
event = "process_start"
pid = 4242
name = "Cyberpunk2077.exe"
gpu = 1
used = "6 GiB"
kind = "graphics"

[[timeline]]
at = 120.0
event = "process_exit"
pid = 4242

[[timeline]]
at = 121.0
event = "game_signal_end"
name = "Cyberpunk 2077"
"""
    )
    records = replay(tmp_path, scenario, 200)
    evictions = [(e["at"], e["gpu"]) for e in of(records, "ModelsEvicted")]
    assert sorted(gpu for _, gpu in evictions) == [0, 1], (
        "the signal frees both GPUs before the process shows"
    )
    assert all(at < 12 for at, _ in evictions), "nothing is evicted later, at the game's end included"
    reloads = [(r["at"], r["gpu"]) for r in of(records, "Resumed")]
    assert [gpu for _, gpu in reloads] == [0, 1]
    assert reloads[0][1] == 0 and reloads[0][0] < 60, "GPU 0's model comes back while the game runs on GPU 1"


def test_a_returning_game_gets_what_it_needed_last_time_lowest_priority_first(tmp_path: Path) -> None:
    scenario = (
        'description = "a 24 GiB card, two models of different priority; the same game twice"\n'
        "duration_s = 600\n"
        + gpu_table(0, "24 GiB")
        + """
[[models]]
name = "chat-8b"
size = "8 GiB"
priority = 1

[[models]]
name = "embed-4b"
size = "4 GiB"
priority = 0
"""
        + game_run(10.0, 11.0, 40.0, 41.0)
        + game_run(150.0, 151.0, 180.0, 181.0)
    )
    records = replay(tmp_path, scenario, 175)
    first, second = of(records, "ModelsEvicted")
    assert set(first["models"]) == {"chat-8b", "embed-4b"}, "the first time, everything goes"
    assert second["models"] == ["embed-4b"], "the next time, only what the game needs, lowest priority first"
    assert all(not o["refused"] for o in of(records, "Outcome")), "and the game still got all it wanted"


def test_a_model_refused_at_start_loads_once_the_blocker_exits(tmp_path: Path) -> None:
    scenario = (
        'description = "Blender holds 9 GiB of 12 GiB when we start and exits at 20 s"\n'
        "duration_s = 600\n"
        + gpu_table(0, "12 GiB")
        + """
[[processes]]
pid = 3100
name = "blender"
used = "9 GiB"
kind = "compute"

[[models]]
name = "chat-4b"
size = "4 GiB"

[[timeline]]
at = 20.0
event = "process_exit"
pid = 3100
"""
    )
    records = replay(tmp_path, scenario, 120)
    refused = of(records, "LoadRefused")
    assert len(refused) == 1 and refused[0]["reason"] == "insufficient_vram"
    allocated = of(records, "VramAllocated")
    assert len(allocated) == 1 and allocated[0]["at"] > 20, "it waited, and came in once there was room"


def test_a_game_signal_during_a_load_is_seen_at_the_busy_pace(tmp_path: Path) -> None:
    scenario = (
        'description = "GameMode registers a game while the 16 GiB model is still loading"\n'
        "duration_s = 600\n"
        + gpu_table(0, "24 GiB")
        + """
[[models]]
name = "big-16b"
size = "16 GiB"

[[timeline]]
at = 0.5
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242
"""
    )
    records = replay(tmp_path, scenario, 5)
    (evicted,) = of(records, "ModelsEvicted")
    assert evicted["at"] <= 0.65, "seen within one busy poll (0.1 s), not the 2 s idle one"
    assert of(records, "VramAllocated") == [], "the load was cancelled, not finished and then freed"
