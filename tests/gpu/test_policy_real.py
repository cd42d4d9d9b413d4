"""The engine on a real GPU: a foreign process that allocates most of the GPU's memory in 1 GiB steps, 250 ms
apart, while our model is resident. We must evict in time: every one of its allocations succeeds.

(A game that grabs everything in one call before the next poll can only be served by a game signal; that
path is measured by bench/reaction_bench.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

GiB = 1 << 30

_GREEDY = """
import sys, time
import cupy as cp
target, step, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
blocks, failures, got = [], 0, 0
cp.cuda.runtime.free(cp.cuda.runtime.malloc(1))
print("READY", flush=True)
sys.stdin.readline()
while got < target:
    try:
        blocks.append(cp.cuda.Memory(step)); got += step
    except cp.cuda.memory.OutOfMemoryError:
        failures += 1
        if failures > 8:
            break
    time.sleep(pause)
print("DONE", got, failures, flush=True)
sys.stdin.readline()
"""


def test_foreign_process_growing_in_steps_gets_all_its_memory(tmp_path: Path) -> None:
    pynvml = pytest.importorskip("pynvml")
    os.environ["VRAM_STEWARD_STATE_DIR"] = str(tmp_path / "state")
    from app.core.settings import ModelConfig, Settings
    from app.core.wiring import build_runtime

    model = tmp_path / "model.bin"
    block = os.urandom(64 << 20)
    with open(model, "wb") as f:
        for _ in range(8 * GiB // len(block)):
            f.write(block)
    settings = Settings(models=(ModelConfig(name="resident-8g", path=model, gpu=0),))
    runtime = build_runtime(settings, with_api=False, audit=False)
    runtime.start_worker()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            snap = runtime.steward.snapshot
            if snap and any(m.state == "resident" for m in snap.models):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the model never became resident")
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        free = pynvml.nvmlDeviceGetMemoryInfo(handle).free
        # more than is free while our model is resident: it can only succeed if we get out of the way
        target = (free + 8 * GiB - 3 * GiB) // GiB * GiB
        child = subprocess.Popen(
            [sys.executable, "-c", _GREEDY, str(target), str(GiB), "0.25"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().startswith("READY")
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline().split()
        child.stdin.write("end\n")
        child.stdin.flush()
        child.wait(30)
        got, failures = int(line[1]), int(line[2])
        print(
            f"foreign process wanted {target / GiB:.0f} GiB, got {got / GiB:.0f} GiB, {failures} failed steps"
        )
        assert failures == 0
        assert got == target
        evicted = [e for e in runtime.steward.snapshot.recent_events if e.kind == "ModelsEvicted"]  # type: ignore[union-attr]
        assert evicted, "we must have evicted our model"
        assert evicted[0].reason == "pressure"  # type: ignore[attr-defined]
    finally:
        runtime.stop()
