"""Fixtures for the NVML backend tests: the stand-in libnvidia-ml.so.1 (built once per session) and a
per-test state file, plus a manual clock."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.gpu.simulated import ManualClock
from tests.fixtures.fake_nvml import STATE_ENV, FakeNvml, FakeNvmlUnavailable, build, install_in_pynvml


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


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
