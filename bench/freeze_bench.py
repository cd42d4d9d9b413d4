"""Freezing a CUDA process (driver checkpoint API) against reloading its weights, on a real NVIDIA GPU.

For 2, 8 and 32 GiB: a PyTorch process loads N GiB of "weights" from a file into VRAM; measured in the same
run, for the same process and bytes:
  * reference: the app reloading its weights from the page cache (free them, read the file again into VRAM);
  * freeze: cuCheckpointProcessLock + Checkpoint (VRAM -> host RAM) through VRAM Steward's driver layer;
  * restore: cuCheckpointProcessRestore + Unlock;
and that the data after the restore is identical.

    PYTHONPATH=. python3 bench/freeze_bench.py --out results.json [--sizes 2,8,32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 1 << 30

TARGET = """
import os, sys, time, torch
path = sys.argv[1]
def load():
    t = time.perf_counter()
    data = torch.from_file(path, shared=False, size=os.path.getsize(path), dtype=torch.uint8)
    x = data.to("cuda")
    torch.cuda.synchronize()
    return x, time.perf_counter() - t
x, first = load()
def digest():
    return int(x[:: 4096].to(torch.int64).sum().item())
print("READY", os.getpid(), first, digest(), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "reload":
        del x
        torch.cuda.empty_cache()
        x, took = load()
        print("RELOADED", took, flush=True)
    elif cmd == "check":
        print("DIGEST", digest(), flush=True)
"""


def write_weights(path: Path, nbytes: int) -> None:
    block = os.urandom(64 << 20)
    with path.open("wb") as out:
        for _ in range(nbytes // len(block)):
            out.write(block)


def ask(process: subprocess.Popen[str], command: str) -> list[str]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()
    return process.stdout.readline().split()


class NvmlPoller:
    """What a watcher does while a freeze runs: NVML's process list on GPU 0, `hz` times a second, with an
    init and shutdown around each read (as tests/gpu's nvml_used does) or one init for all (as the engine)."""

    def __init__(self, hz: float, *, init_each: bool) -> None:
        import threading

        self.hz, self.init_each, self.reads = hz, init_each, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NvmlPoller:
        if self.hz > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.hz > 0:
            self._thread.join(30)

    def _run(self) -> None:
        import pynvml

        if not self.init_each:
            pynvml.nvmlInit()
        while not self._stop.wait(1.0 / self.hz):
            if self.init_each:
                pynvml.nvmlInit()
            pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
            if self.init_each:
                pynvml.nvmlShutdown()
            self.reads += 1
        if not self.init_each:
            pynvml.nvmlShutdown()


def one_size(
    driver: Any, gib: int, folder: Path, *, poll_hz: float = 0.0, init_each: bool = False
) -> dict[str, Any]:
    path = folder / f"weights-{gib}g.bin"
    write_weights(path, gib * GiB)
    process = subprocess.Popen(
        [sys.executable, "-c", TARGET, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        pid, first_load_s, digest = int(ready[1]), float(ready[2]), int(ready[3])
        reload_s = float(ask(process, "reload")[1])  # the reference: weights from the page cache again
        with NvmlPoller(poll_hz, init_each=init_each) as poller:
            started = time.perf_counter()
            driver.lock(pid, 30_000)
            lock_s = time.perf_counter() - started
            driver.checkpoint(pid)
            freeze_s = time.perf_counter() - started
        started = time.perf_counter()
        driver.restore(pid)
        driver.unlock(pid)
        restore_s = time.perf_counter() - started
        same = int(ask(process, "check")[1]) == digest
        nbytes = gib * GiB
        row = {
            "gib": gib,
            "nvml_poll_hz": poll_hz,
            "nvml_init_each_read": init_each,
            "nvml_reads_during_freeze": poller.reads,
            "lock_s": lock_s,
            "first_load_s": first_load_s,
            "reload_from_page_cache_s": reload_s,
            "freeze_s": freeze_s,
            "restore_s": restore_s,
            "freeze_gb_per_s": nbytes / freeze_s / 1e9,
            "restore_gb_per_s": nbytes / restore_s / 1e9,
            "reload_gb_per_s": nbytes / reload_s / 1e9,
            "restore_vs_reload": reload_s / restore_s,
            "data_identical": same,
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        process.kill()
        process.wait(60)
        path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="2,8,32")
    parser.add_argument("--poll-nvml-hz", type=float, default=0.0, help="read NVML this often during freezes")
    parser.add_argument("--nvml-init-each", action="store_true", help="nvmlInit/Shutdown around each read")
    args = parser.parse_args()
    from app.core.freeze.driver import open_driver

    driver = open_driver()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs-freeze-") as tmp:
        for gib in (int(s) for s in args.sizes.split(",")):
            rows.append(
                one_size(driver, gib, Path(tmp), poll_hz=args.poll_nvml_hz, init_each=args.nvml_init_each)
            )
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
