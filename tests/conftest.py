"""Suite-wide: every test gets its own runtime folder (the engine lock, the tray's socket), so a daemon or
tray that a test starts never meets the developer's running VRAM Steward, nor another test's."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # short, under /tmp: a socket path must stay under 108 bytes; tests that exercise $XDG_RUNTIME_DIR
    # itself drop this override from their subprocesses' environment (tests/fixtures/engine_procs.py)
    folder = Path(tempfile.mkdtemp(prefix="vs-run-"))
    monkeypatch.setenv("VRAM_STEWARD_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
