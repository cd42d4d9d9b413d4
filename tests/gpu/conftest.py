"""tests/gpu runs only where an NVIDIA GPU is usable. Elsewhere every test here is skipped, with ONE loud
notice at the end of the run that says what was not tested.

Whether a GPU is usable is asked in a child process: pynvml keeps the first libnvidia-ml it loads for the
life of the process, and the fake-NVML tests (tests/core/gpu) in the same run must not meet the real one.
Needs only pytest and the standard library here (pynvml and cupy in the child), so tests/gpu runs on a GPU
machine without the dev venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.gpu.helpers import VramHog, start_vram_hog

GPU_DIR = Path(__file__).resolve().parent
NOT_TESTED = (
    "real NVML vs nvidia-smi (memory, names, uuids), `vram-steward status --json` vs nvidia-smi, "
    "a real CUDA process in NVML's process list, real CuPy allocations and the residency host"
)
_NOTICE = pytest.StashKey[str]()

_PROBE = """
import json
try:
    import pynvml
except ImportError as exc:
    print(json.dumps({"reason": f"nvidia-ml-py is not installed ({exc})"})); raise SystemExit
try:
    pynvml.nvmlInit()
except pynvml.NVMLError as exc:
    known = {pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED}
    print(json.dumps({"reason": "NVIDIA driver not found" if exc.value in known else f"NVML: {exc}"}))
    raise SystemExit
count = pynvml.nvmlDeviceGetCount()
names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
pynvml.nvmlShutdown()
print(json.dumps({"count": count, "names": [n.decode() if isinstance(n, bytes) else n for n in names]}))
"""


def probe_gpu() -> tuple[bool, str]:
    """(usable, what was found or why not)."""
    env = {key: value for key, value in os.environ.items() if key != "FAKE_NVML_STATE"}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, env=env, check=False
        )
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return False, f"the NVML probe failed ({exc!r})"
    if "reason" in answer:
        return False, str(answer["reason"])
    if not answer["count"]:
        return False, "NVML lists no GPU"
    return True, ", ".join(answer["names"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if GPU_DIR in item.path.parents or item.path.parent == GPU_DIR]
    if not mine:
        return
    for item in mine:
        item.add_marker(pytest.mark.gpu)
    usable, found = probe_gpu()
    if usable:
        return
    skip = pytest.mark.skip(reason=f"no NVIDIA GPU ({found})")
    for item in mine:
        item.add_marker(skip)
    config.stash[_NOTICE] = (
        f"tests/gpu: SKIPPED {len(mine)} GPU tests: no NVIDIA GPU ({found}). Not tested here: {NOT_TESTED}."
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    notice = config.stash.get(_NOTICE, None)
    if notice:
        terminalreporter.write_sep("!", "GPU TESTS NOT RUN", yellow=True, bold=True)
        terminalreporter.write_line(notice, yellow=True, bold=True)


@pytest.fixture(scope="session")
def cupy() -> ModuleType:
    """CuPy, from whichever wheel provides it (cupy-cuda12x, cupy-cuda13x, ...); skips when missing."""
    return pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x)")


@pytest.fixture
def vram_hog(cupy: ModuleType) -> Iterator[Callable[..., VramHog]]:
    """start(nbytes, device=0) -> a child process holding that much VRAM; all are stopped after the test."""
    started: list[VramHog] = []

    def start(nbytes: int, device: int = 0) -> VramHog:
        hog = start_vram_hog(nbytes, device)
        started.append(hog)
        return hog

    yield start
    for hog in started:
        hog.stop()
