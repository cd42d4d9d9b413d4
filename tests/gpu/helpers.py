"""Helpers for tests on a real NVIDIA GPU: a child process that holds VRAM through CuPy.

Standard library only (the child imports CuPy), so tests/gpu runs on a GPU machine without the dev venv.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from types import TracebackType

_CHILD = """
import os, sys
import cupy as cp
nbytes, device = int(sys.argv[1]), int(sys.argv[2])
with cp.cuda.Device(device):
    block = cp.cuda.Memory(nbytes)  # one cudaMalloc of exactly nbytes, not CuPy's pool
    cp.cuda.runtime.memset(block.ptr, 0, nbytes)  # touch it, so it is resident
    cp.cuda.runtime.deviceSynchronize()
print("READY", os.getpid(), flush=True)
sys.stdin.read()  # hold the memory until the parent closes our stdin
"""


class VramHog:
    """A child process holding `nbytes` of VRAM on GPU `device` (plus its CUDA context, ~0.5 GiB).
    Use as a context manager, or call stop()."""

    def __init__(self, process: subprocess.Popen[str], nbytes: int, device: int) -> None:
        self.process = process
        self.nbytes = nbytes
        self.device = device

    @property
    def pid(self) -> int:
        """The child's pid in our pid namespace (NVML reports host pids: inside a container they differ)."""
        return self.process.pid

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let the child exit (freeing its VRAM); kill it if it does not within timeout_s."""
        if self.process.poll() is not None:
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def __enter__(self) -> VramHog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def start_vram_hog(nbytes: int, device: int = 0, timeout_s: float = 120.0) -> VramHog:
    """Start a child that allocates `nbytes` on GPU `device` with CuPy and waits; returns once the memory
    is allocated and touched. Raises RuntimeError (with the child's stderr) if it fails or takes too long."""
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(nbytes), str(device)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    hog = VramHog(process, nbytes, device)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(timeout=remaining):
                hog.stop(timeout_s=5)
                raise RuntimeError(f"the VRAM child did not allocate {nbytes} bytes within {timeout_s:.0f} s")
            line = process.stdout.readline()
            if line.startswith("READY"):
                return hog
            if not line:  # it exited
                process.wait(timeout=10)
                stderr = process.stderr.read() if process.stderr else ""
                raise RuntimeError(
                    f"the VRAM child exited with {process.returncode} before allocating:\n{stderr[-2000:]}"
                )
