"""Suite-wide: every test gets its own runtime folder (the engine lock, the tray's socket), so a daemon or
tray that a test starts never meets the developer's running VRAM Steward, nor another test's; and the
stand-in libnvidia-ml.so.1 (`fake_nvml`) for any test that runs the real nvidia-ml-py, and the stand-in
libcuda.so.1 with the checkpoint API (`fake_cuda`) for the freezer's driver."""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import fake_cuda as fake_cuda_lib
from tests.fixtures.fake_cuda import FakeCuda, FakeCudaUnavailable
from tests.fixtures.fake_nvml import STATE_ENV, FakeNvml, FakeNvmlUnavailable, build, install_in_pynvml


@pytest.fixture(autouse=True)
def private_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # short, under /tmp: a socket path must stay under 108 bytes; tests that exercise $XDG_RUNTIME_DIR
    # itself drop this override from their subprocesses' environment (tests/fixtures/engine_procs.py)
    folder = Path(tempfile.mkdtemp(prefix="vs-run-"))
    monkeypatch.setenv("VRAM_STEWARD_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_nvml_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ctypes.CDLL]:
    """Build fake_nvml.c against the real nvml.h and make pynvml use it (for the whole session: pynvml keeps
    its library handle for the life of the process)."""
    try:
        path = build(tmp_path_factory.mktemp("fake_nvml"))
    except FakeNvmlUnavailable as exc:
        pytest.fail(f"cannot build the stand-in libnvidia-ml.so.1: {exc}")
    return path, install_in_pynvml(path)


@pytest.fixture
def fake_nvml(
    fake_nvml_library: tuple[Path, ctypes.CDLL], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeNvml]:
    """The fake with an empty state file of this test's own (write() to describe GPUs and processes)."""
    state_file = tmp_path / "nvml_state.txt"
    state_file.write_text("")
    monkeypatch.setenv(STATE_ENV, str(state_file))  # the C code getenv()s it on every call
    fake = FakeNvml(fake_nvml_library[1], state_file)
    fake.reset_calls()
    yield fake
    import pynvml

    for _ in range(100):  # balance any nvmlInit that a test left open
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            break


@pytest.fixture(scope="session")
def fake_cuda_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ctypes.CDLL]:
    """Build fake_cuda.c (the driver's checkpoint API) once. Loaded by absolute path and NOT globally: the
    driver under test opens the same path (`open_driver(library=fake_cuda.library)`)."""
    try:
        path = fake_cuda_lib.build(tmp_path_factory.mktemp("fake_cuda"))
    except FakeCudaUnavailable as exc:
        pytest.fail(f"cannot build the stand-in libcuda.so.1: {exc}")
    return path, fake_cuda_lib.load(path)


@pytest.fixture
def fake_cuda(
    fake_cuda_library: tuple[Path, ctypes.CDLL],
    fake_nvml: FakeNvml,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FakeCuda]:
    """The fake libcuda.so.1 with an empty configuration of this test's own (write() to add `pid` lines) and
    no checkpoint states; the memory it moves is in `fake_nvml`'s state file."""
    state_file = tmp_path / "cuda_state.txt"
    state_file.write_text("")
    monkeypatch.setenv(fake_cuda_lib.STATE_ENV, str(state_file))  # the C code getenv()s it on every call
    fake = FakeCuda(fake_cuda_library[1], fake_cuda_library[0], state_file)
    fake.reset()
    yield fake
    fake.reset()
