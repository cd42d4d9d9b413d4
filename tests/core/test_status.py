"""build_status: the status document's shape (checked against a JSON schema) and values; the text table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.core.config import Settings
from app.core.engine.status import SCHEMA_VERSION, build_status, format_status_table, usage_bar
from app.core.events import GameStarted, ModelsEvicted
from app.core.gpu.null import NullBackend
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.holders import ModelState, ModelStatus
from app.core.units import GiB, MiB

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "status_schema.json").read_text())
OUR_PID = 90001


def validate(status: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(status)))


def game_at_30() -> SimulatedBackend:
    return SimulatedBackend.from_file("game-launch", clock=ManualClock(30.0))


def test_game_launch_at_30_s_with_everything() -> None:
    backend = game_at_30()
    model = ModelStatus(
        name="llama-3.1-8b-instruct-q8_0",
        gpu=0,
        size_bytes=8 * GiB,
        state=ModelState.EVICTED,
        holder="builtin",
    )
    evicted = ModelsEvicted(
        at=20.1,
        gpu=0,
        models=("llama-3.1-8b-instruct-q8_0",),
        reason="game",
        trigger="Cyberpunk 2077",
        freed_bytes=8 * GiB,
    )
    status = build_status(
        backend.sample(),
        settings=Settings(),
        models=[model],
        events=[*backend.scenario_events(), evicted],
        roles={(0, 4242): "game", (0, 1201): "desktop"},
        state="evicted",
        extra={"paused": False},
        wall_clock=lambda: 0.0,
    )
    validate(status)
    assert status["schema_version"] == SCHEMA_VERSION == 1
    assert (status["backend"], status["backend_state"], status["state"]) == (
        "simulated",
        "simulated",
        "evicted",
    )
    assert status["taken_at"] == 30.0
    assert status["generated_at"] == "1970-01-01T00:00:00+00:00"
    assert status["game_signals"] == ["Cyberpunk 2077"]
    assert status["paused"] is False
    (gpu,) = status["gpus"]
    assert gpu["total_bytes"] == 12 * GiB and gpu["free_bytes"] == 1192 * MiB
    assert gpu["used_bytes"] == 600 * MiB + 10 * GiB and gpu["reserved_bytes"] == 256 * MiB
    assert gpu["headroom_bytes"] == 2 * GiB  # max(2 GiB, 10 % of 12 GiB)
    assert (gpu["temperature_c"], gpu["utilization_percent"], gpu["state"]) == (71, 98, "ok")
    roles = {p["pid"]: p["role"] for p in gpu["processes"]}
    assert roles == {1201: "desktop", 1650: None, 2310: None, 4242: "game"}
    game = next(p for p in gpu["processes"] if p["pid"] == 4242)
    assert game == {
        "pid": 4242,
        "name": "Cyberpunk2077.exe",
        "used_bytes": 10 * GiB,
        "kind": "graphics",
        "role": "game",
    }
    assert status["models"] == [model.to_json()]
    assert [e["type"] for e in status["events"]] == ["GameStarted", "ModelsEvicted"]
    assert status["events"][1]["freed_bytes"] == 8 * GiB


def test_without_settings_headroom_is_null_and_state_passes_through() -> None:
    status = build_status(game_at_30().sample())
    validate(status)
    assert status["gpus"][0]["headroom_bytes"] is None
    assert status["state"] is None and status["models"] == [] and status["events"] == []


def test_headroom_follows_the_settings_on_a_large_card() -> None:
    backend = SimulatedBackend.from_file("dedicated-server", clock=ManualClock(0.0))
    status = build_status(
        backend.sample(), settings=Settings(reserved_system_vram=1 * GiB, headroom_percent=5.0)
    )
    assert status["gpus"][0]["headroom_bytes"] == int(141 * GiB * 0.05)
    validate(status)


def test_lost_gpu_and_our_own_process() -> None:
    backend = SimulatedBackend.from_file("gpu-lost", clock=ManualClock(20.0))
    backend.allocate(0, OUR_PID, "vram-steward-host", 1 * GiB)
    status = build_status(backend.sample(), settings=Settings(), roles={(0, OUR_PID): "self"})
    validate(status)
    gpu0, gpu1 = status["gpus"]
    ours = next(p for p in gpu0["processes"] if p["pid"] == OUR_PID)
    assert (ours["kind"], ours["role"], ours["used_bytes"]) == ("compute", "self", 1 * GiB)
    assert gpu1["state"] == "lost" and "Xid 79" in gpu1["message"]
    assert gpu1["temperature_c"] is None and gpu1["unavailable"]["temperature_c"] == "GPU is lost"
    assert gpu1["processes"] == []


def test_no_gpu_document() -> None:
    status = build_status(NullBackend(clock=lambda: 5.0).sample())
    validate(status)
    assert (status["backend"], status["backend_state"], status["gpus"]) == ("none", "no_driver", [])
    assert status["message"].startswith("No NVIDIA GPU found")
    text = format_status_table(status)
    assert text.startswith("No NVIDIA GPU found") and "(try --simulate game-launch)" in text


def test_extra_cannot_replace_a_defined_field() -> None:
    with pytest.raises(ValueError, match="'gpus'"):
        build_status(game_at_30().sample(), extra={"gpus": []})


def test_schema_rejects_a_renamed_field() -> None:
    status = build_status(game_at_30().sample())
    status["gpus"][0]["free"] = status["gpus"][0].pop("free_bytes")
    with pytest.raises(jsonschema.ValidationError):
        validate(status)


@pytest.mark.parametrize(
    ("used", "total", "bar"),
    [
        (0, 10, "[" + "." * 20 + "]"),
        (5, 10, "[" + "#" * 10 + "." * 10 + "]"),
        (10, 10, "[" + "#" * 20 + "]"),
        (3, 0, "[" + "." * 20 + "]"),
    ],
)
def test_usage_bar(used: int, total: int, bar: str) -> None:
    assert usage_bar(used, total) == bar


def test_table_for_people() -> None:
    backend = game_at_30()
    model = ModelStatus(
        name="llama-8b", gpu=0, size_bytes=8 * GiB, state=ModelState.RESIDENT, holder="builtin"
    )
    started = GameStarted(at=20.0, name="Cyberpunk 2077", source="gamemode", pid=4242)
    status = build_status(
        backend.sample(),
        settings=Settings(),
        models=[model],
        events=[started],
        roles={(0, 4242): "game"},
        state="idle",
    )
    text = format_status_table(status)
    lines = text.splitlines()
    assert lines[0] == "Backend: simulated    engine: idle"
    assert "Game signals: Cyberpunk 2077" in lines
    assert "GPU 0  NVIDIA GeForce RTX 3060" in lines
    bar_line = next(line for line in lines if line.strip().startswith("["))
    # 10.6 of 12 GiB used: 18 of 20 cells
    assert bar_line.strip().startswith("[##################..] 10.6 GiB / 12.0 GiB used, 1.2 GiB free")
    assert "(71 °C, 98 % busy)" in bar_line
    game_row = next(line for line in lines if "Cyberpunk2077.exe" in line)
    assert game_row.split() == ["4242", "Cyberpunk2077.exe", "graphics", "10.0", "GiB", "game"]
    assert any("llama-8b" in line and "resident" in line for line in lines)
    assert any("GameStarted" in line and "20.0 s" in line for line in lines)


def test_table_shows_a_lost_gpu_in_one_line() -> None:
    backend = SimulatedBackend.from_file("gpu-lost", clock=ManualClock(20.0))
    text = format_status_table(build_status(backend.sample()))
    lost = [line for line in text.splitlines() if line.startswith("GPU 1")]
    assert len(lost) == 1 and "LOST: GPU 1 (NVIDIA GeForce RTX 3090) fell off the bus" in lost[0]


def test_the_documented_example_is_current() -> None:
    """docs/status-json.md shows real output; it must still match what the code produces."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "status-json.md").read_text()
    example = json.loads(doc.split("```json\n", 1)[1].split("\n```", 1)[0])
    validate(example)
    fresh = build_status(
        game_at_30().sample(),
        settings=Settings(),
        events=game_at_30().scenario_events(),
        extra={"scenario": example["scenario"]},
    )
    for document in (example, fresh):
        del document["generated_at"]
    assert example == fresh
    documented = {line.split("`")[1] for line in doc.splitlines() if line.startswith("| `")}
    gpu = example["gpus"][0]
    for key in [*example, *gpu, *gpu["processes"][0]]:
        assert key in documented, f"{key} is not documented in docs/status-json.md"
