"""`vram-steward status` run as a user runs it: a subprocess of `python -m app`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.units import GiB, MiB

ROOT = Path(__file__).resolve().parents[2]


def vram_steward(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("CONFIG", "STATE", "LOG"):  # never read or write the real user's files
        env[f"VRAM_STEWARD_{name}_DIR"] = str(tmp_path / name.lower())
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_simulated_game_at_30_s_as_json(tmp_path: Path) -> None:
    result = vram_steward("status", "--simulate", "game-launch", "--at", "30", "--json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["schema_version"], status["backend"], status["taken_at"]) == (1, "simulated", 30.0)
    assert status["scenario"] == {"name": "game-launch", "path": status["scenario"]["path"], "at_s": 30.0}
    (gpu,) = status["gpus"]
    game = next(p for p in gpu["processes"] if p["pid"] == 4242)
    assert game["name"] == "Cyberpunk2077.exe" and game["used_bytes"] == 10 * GiB  # fully ramped by 30 s
    assert gpu["free_bytes"] == 1192 * MiB and gpu["headroom_bytes"] == 2 * GiB
    assert status["game_signals"] == ["Cyberpunk 2077"]
    assert [e["type"] for e in status["events"]] == ["GameStarted"]


def test_simulated_mid_ramp_as_a_table(tmp_path: Path) -> None:
    result = vram_steward("status", "--simulate", "game-launch", "--at", "26", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "Cyberpunk2077.exe" in line)
    assert row.split()[-3:] == ["5.1", "GiB", "-"]  # 5270 MiB half way up the ramp; no role without an engine
    assert "GPU 0  NVIDIA GeForce RTX 3060" in result.stdout


def test_bad_scenario_file_gives_the_precise_error_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gpus]]\nindex = 0\nname = "G"\ntotal = "twelve"\n')
    result = vram_steward("status", "--simulate", str(bad), tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{bad}: gpus[0].total = 'twelve': expected a size such as" in result.stderr


def test_unknown_scenario_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    result = vram_steward("status", "--simulate", "no-such-scenario", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "game-launch" in result.stderr and "steam-game" in result.stderr


def test_negative_time_is_refused(tmp_path: Path) -> None:
    result = vram_steward("status", "--simulate", "game-launch", "--at", "-3", tmp_path=tmp_path)
    assert result.returncode == 2 and "0 or more" in result.stderr


def _machine_has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


@pytest.mark.skipif(_machine_has_nvidia_gpu(), reason="this machine has an NVIDIA GPU; tests/gpu covers it")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    result = vram_steward("status", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No NVIDIA GPU found")
    assert "(try --simulate game-launch)" in result.stdout
    as_json = vram_steward("status", "--json", tmp_path=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert (status["backend"], status["gpus"]) == ("none", [])
    assert "NVIDIA" in status["message"]  # why: no driver, or the driver lists no GPU
