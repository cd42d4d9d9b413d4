"""`vram-steward replay` run as a user runs it: it names the settings file it used, and shows the outcome
(free VRAM, other processes refused memory) after each tick where something happens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vram_steward(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("CONFIG", "STATE", "LOG"):  # never read or write the real user's files
        env[f"VRAM_STEWARD_{name}_DIR"] = str(tmp_path / name.lower())
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_with_the_exclusive_app_in_the_settings_file_the_replay_evicts_and_says_which_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "try.toml"
    config.write_text('schema_version = 2\nexclusive_apps = ["blender"]\n')
    result = vram_steward("--config", str(config), "replay", "exclusive-app", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Settings: {config}"
    assert lines[1] == "  auto_pause_for_gaming on, auto_evict on, exclusive_apps: blender"
    evicted = next(line for line in lines if "ModelsEvicted" in line)
    assert evicted.endswith("blender started: freed 6.0 GiB (1 model: qwen2.5-7b-instruct-q6_k) on GPU 0")
    after = lines[lines.index(evicted) + 1]
    assert "-> outcome" in after and after.endswith("GiB free; no other process refused memory")
    assert lines[-1].endswith("final state: active; no other process was refused memory")
    assert config.read_text() == 'schema_version = 2\nexclusive_apps = ["blender"]\n'  # read, never rewritten


def test_with_the_defaults_the_replay_says_so_and_nothing_is_evicted(tmp_path: Path) -> None:
    result = vram_steward("replay", "exclusive-app", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Settings: the defaults (no file at {tmp_path / 'config' / 'config.toml'})"
    assert "exclusive_apps: none" in lines[1]
    assert not any("ModelsEvicted" in line for line in lines)


def test_the_outcome_shows_another_process_refused_memory(tmp_path: Path) -> None:
    config = tmp_path / "off.toml"
    config.write_text("schema_version = 2\nauto_pause_for_gaming = false\nauto_evict = false\n")
    result = vram_steward(
        "--config", str(config), "replay", "game-launch", "--until", "40", tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stderr
    refused = [line for line in result.stdout.splitlines() if "refused memory on GPU 0" in line]
    assert len(refused) == 1, result.stdout  # said when it starts, not on every tick of the ramp
    assert "-> outcome" in refused[0] and "GPU 0: 0 B free; Cyberpunk2077.exe (pid 4242)" in refused[0]
    assert "other processes refused memory: Cyberpunk2077.exe (pid 4242)" in result.stdout.splitlines()[-1]


def test_json_names_the_settings_file_first(tmp_path: Path) -> None:
    config = tmp_path / "try.toml"
    config.write_text('schema_version = 2\nexclusive_apps = ["blender"]\n')
    result = vram_steward("--config", str(config), "replay", "exclusive-app", "--json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert objects[0] == {"type": "Settings", "settings_file": str(config)}
    assert any(o["type"] == "Outcome" for o in objects)


def test_a_schema_1_file_is_read_as_migrated_and_never_rewritten(tmp_path: Path) -> None:
    """replay only reads: an old file is used as migrated in memory, and stays as the user wrote it."""
    config = tmp_path / "old.toml"
    old = 'check_interval = 1.0\nexclusive_apps = ["blender"]\n'
    config.write_text(old)
    result = vram_steward("--config", str(config), "replay", "exclusive-app", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"Settings: {config}"
    assert any("ModelsEvicted" in line for line in result.stdout.splitlines())
    assert config.read_text() == old
    assert list(tmp_path.glob("old.toml*")) == [config]  # no backup either: nothing was migrated on disk
