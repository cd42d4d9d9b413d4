"""A real desktop for the tray app: Xvfb, a private D-Bus session bus, a StatusNotifierItem watcher and dunst
(tests/fixtures/desktop_session.py). Skipped, saying what to install, only when a binary is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.desktop_session import DesktopSession, missing_desktop_parts, start_desktop_session


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[DesktopSession]:
    problem = missing_desktop_parts()
    if problem is not None:
        pytest.skip(f"no real desktop for the tray app test: {problem}")
    workdir = tmp_path / "desktop"
    workdir.mkdir()
    session = start_desktop_session(workdir)
    yield session
    session.stop()
