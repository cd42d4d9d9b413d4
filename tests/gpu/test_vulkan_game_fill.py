"""A Vulkan game on the NVIDIA GPU, seen by VRAM Steward's layer before it creates its device: while our
8 GiB model is resident, a stand-in game (tests/fixtures/vk_standin_game.c) creates a device on the NVIDIA GPU
and at once allocates 95 % of the device-local heap in 1 GiB blocks as fast as it can. Polling NVML cannot
beat that (2-3 failed allocations measured on an H200); the layer holds vkCreateDevice until the engine has
freed the model, so every allocation must succeed.

Needs, besides tests/gpu's NVIDIA GPU and CuPy: gcc, the Vulkan loader and headers (Debian: libvulkan1
libvulkan-dev; loader .debs unpacked elsewhere work through CPATH, LIBRARY_PATH and LD_LIBRARY_PATH) and
NVIDIA's Vulkan ICD (nvidia_icd.json; VK_ICD_FILENAMES, or one of tests/fixtures/vulkan_world.NVIDIA_ICDS).
Skipped with the reason when any is missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.vulkan_world import WINDOWS_GAME_ENV, fill_summary, nvidia_world

GiB = 1 << 30
MODEL_BYTES = 8 * GiB


def test_a_vulkan_game_filling_95_percent_gets_every_allocation(
    tmp_path: Path, private_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    world = nvidia_world(tmp_path, private_runtime_dir)
    from app.core.settings import ModelConfig, Settings
    from app.core.wiring import build_runtime

    model = tmp_path / "model.bin"
    block = os.urandom(64 << 20)
    with open(model, "wb") as f:
        for _ in range(MODEL_BYTES // len(block)):
            f.write(block)
    # a short cooldown: the model comes back soon after the reference run's game exits
    resident = ModelConfig(name="resident-8g", path=model, gpu=0)
    settings = Settings(models=(resident,), resume_cooldown_secs=2.0)
    runtime = build_runtime(settings, with_api=False, audit=False)
    events: list[object] = []
    assert runtime.vulkan_layer is not None and runtime.vulkan_layer.serving
    runtime.vulkan_layer.subscribe(events.append)
    timeline: list[tuple[float, str, int]] = []  # (time, model states, our bytes in NVML) at each change

    def note(snapshot: Any) -> None:
        states = ",".join(m.state for m in snapshot.models)
        ours = sum(
            p.used_bytes or 0
            for g in snapshot.telemetry.gpus
            for p in g.processes
            if snapshot.roles.get((g.index, p.pid)) == "self"
        )
        if not timeline or timeline[-1][1:] != (states, ours):
            timeline.append((time.monotonic(), states, ours))

    runtime.steward.subscribe_snapshots(note)
    runtime.start_worker()

    def wait_resident() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            snap = runtime.steward.snapshot
            if snap and any(m.state == "resident" for m in snap.models):
                return
            time.sleep(0.05)
        pytest.fail("the model never became resident")

    try:
        wait_resident()
        # the reference, same run: the layer off, so only polling NVML can free the model
        reference = world.run(
            "--nvidia", "--fill-percent", "95", "--block-mib", "1024", timeout_s=300,
            VRAM_STEWARD_LAYER_DISABLE="1", **WINDOWS_GAME_ENV,
        )  # fmt: skip
        assert reference.returncode == 0, reference.stderr
        print(f"reference, layer off (polling only): {json.dumps(fill_summary(reference.devices))}")
        assert not events, "the disabled layer reported nothing"
        wait_resident()
        layered_at = time.monotonic()
        run = world.run(
            "--nvidia", "--fill-percent", "95", "--block-mib", "1024", timeout_s=300, **WINDOWS_GAME_ENV
        )
        assert run.returncode == 0, run.stderr
        summary = fill_summary(run.devices)
        steps = [(round(t - layered_at, 3), states, round(ours / GiB, 2)) for t, states, ours in timeline]
        print(f"engine after the game started (s, states, our GiB): {[s for s in steps if s[0] > -1]}")
        print(f"Vulkan game on the NVIDIA GPU: {json.dumps(summary)}; events: {[str(e) for e in events]}")
        assert summary["failed"] == 0, f"failed allocations: {summary}"
        assert float(summary["taken_gib"]) >= 0.9 * float(summary["heap_gib"])  # type: ignore[arg-type]
        assert float(summary["create_s"]) < 0.75, "answered before the layer's deadline"  # type: ignore[arg-type]
        assert [e.outcome for e in events] == ["freed"]  # type: ignore[attr-defined]
    finally:
        runtime.stop()
