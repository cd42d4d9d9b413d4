"""NvmlBackend and `vram-steward status --json` against nvidia-smi, on a real NVIDIA GPU.

Our readings are taken in child processes: pynvml keeps the first libnvidia-ml it loads, and in a full test
run this process may already hold the stand-in library of tests/core/gpu.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.gpu.helpers import VramHog

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
GiB = 1 << 30
MEMORY_TOLERANCE_MIB = 64  # other processes may allocate between our reading and nvidia-smi's
CONTEXT_ALLOWANCE = 3 * GiB // 2  # a CUDA context costs ~0.5 GiB; allow for a bigger one

SAMPLE = textwrap.dedent(
    """
    import json
    from app.core.gpu.nvml import NvmlBackend
    backend = NvmlBackend()
    snap = backend.sample()
    backend.close()
    print(json.dumps({
        "state": snap.state, "message": snap.message, "driver": snap.driver_version,
        "gpus": [{
            "index": g.index, "name": g.name, "uuid": g.uuid, "state": g.state,
            "total_bytes": g.total_bytes, "used_bytes": g.used_bytes, "free_bytes": g.free_bytes,
            "reserved_bytes": g.reserved_bytes,
            "processes": [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes, "kind": p.kind}
                          for p in g.processes],
        } for g in snap.gpus],
    }))
    """
)


def _child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "FAKE_NVML_STATE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def sample_in_child() -> dict[str, Any]:
    """NvmlBackend().sample() in a fresh process, as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", SAMPLE],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["state"] == "ok", answer["message"]
    return answer


def nvidia_smi(*query: str) -> list[list[str]]:
    """Rows of `nvidia-smi <query> --format=csv,noheader,nounits`."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH")
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def assert_gpus_match_nvidia_smi(gpus: list[dict[str, Any]]) -> None:
    rows = nvidia_smi("--query-gpu=index,name,uuid,memory.total,memory.used,memory.free")
    ours = {gpu["index"]: gpu for gpu in gpus}
    assert sorted(ours) == sorted(int(row[0]) for row in rows)
    for index, name, uuid, total_mib, used_mib, free_mib in rows:
        gpu = ours[int(index)]
        assert (gpu["name"], gpu["uuid"]) == (name, uuid)
        assert abs(gpu["total_bytes"] / MiB - int(total_mib)) <= 1
        assert abs(gpu["used_bytes"] / MiB - int(used_mib)) <= MEMORY_TOLERANCE_MIB, (gpu, used_mib)
        assert abs(gpu["free_bytes"] / MiB - int(free_mib)) <= MEMORY_TOLERANCE_MIB, (gpu, free_mib)


def test_sample_matches_nvidia_smi() -> None:
    answer = sample_in_child()
    assert answer["driver"] == nvidia_smi("--query-gpu=driver_version")[0][0]
    assert_gpus_match_nvidia_smi(answer["gpus"])
    for gpu in answer["gpus"]:
        assert gpu["state"] == "ok"
        assert gpu["reserved_bytes"] is not None  # every current driver has NVML memory v2


def test_status_json_matches_nvidia_smi() -> None:
    status_module = REPO / "app" / "cli" / "status.py"
    if not status_module.exists():
        pytest.skip("the status command does not exist yet (app/cli/status.py)")
    result = subprocess.run(
        [sys.executable, "-m", "app", "status", "--json"],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=REPO,
        timeout=120,
    )
    if result.returncode != 0 and "ModuleNotFoundError" in result.stderr:
        pytest.skip(
            f"the app's dependencies are not installed here: {result.stderr.strip().splitlines()[-1]}"
        )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["backend"] == "nvml"
    assert_gpus_match_nvidia_smi(status["gpus"])


def _find_hog(before: set[int], after: dict[int, dict[str, Any]], hog: VramHog) -> dict[str, Any]:
    """The child's entry: by pid, or (inside a container, where NVML gives host pids) the one new pid."""
    if hog.pid in after:
        return after[hog.pid]
    new = [pid for pid in after if pid not in before]
    assert len(new) == 1, f"cannot tell the VRAM child (pid {hog.pid}) among new processes {new}"
    return after[new[0]]


def test_allocation_shows_as_compute_process(vram_hog: Callable[..., VramHog]) -> None:
    before = {p["pid"] for p in sample_in_child()["gpus"][0]["processes"]}
    hog = vram_hog(GiB, 0)
    gpu = sample_in_child()["gpus"][0]
    entry = _find_hog(before, {p["pid"]: p for p in gpu["processes"]}, hog)

    assert entry["kind"] in ("compute", "both")
    assert entry["used_bytes"] is not None
    assert GiB <= entry["used_bytes"] <= GiB + CONTEXT_ALLOWANCE, entry

    smi = {int(pid): int(used) for pid, used in nvidia_smi("--query-compute-apps=pid,used_memory")}
    assert entry["pid"] in smi
    assert abs(entry["used_bytes"] / MiB - smi[entry["pid"]]) <= 1
    ours = {p["pid"]: p["used_bytes"] for p in gpu["processes"] if p["kind"] in ("compute", "both")}
    for pid, used_mib in smi.items():
        if pid in ours and ours[pid] is not None:
            assert abs(ours[pid] / MiB - used_mib) <= MEMORY_TOLERANCE_MIB, (pid, ours[pid], used_mib)

    hog.stop()
    after = {p["pid"] for p in sample_in_child()["gpus"][0]["processes"]}
    assert entry["pid"] not in after  # its VRAM and its process entry are gone once it exits
