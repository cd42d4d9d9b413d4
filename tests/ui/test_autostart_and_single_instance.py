"""The XDG autostart entry, and the hand-over from a second launch to the running instance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.ui import autostart
from app.ui.single_instance import SingleInstance, hand_over_to_running


def test_autostart_writes_and_removes_the_xdg_entry(private_dirs: Path) -> None:
    path = private_dirs / "xdg" / "autostart" / "vram-steward.desktop"
    assert autostart.autostart_file() == path
    assert not autostart.is_enabled()
    autostart.set_enabled(True, command="/opt/vram-steward/bin/vram-steward")
    text = path.read_text()
    assert "[Desktop Entry]" in text.splitlines()[0]
    assert "Exec=/opt/vram-steward/bin/vram-steward gui" in text.splitlines()
    assert "Type=Application" in text.splitlines()
    assert autostart.is_enabled()
    autostart.set_enabled(False)
    assert not path.exists()
    autostart.set_enabled(False)  # removing twice is fine


def test_a_second_launch_asks_the_first_to_show(qtbot: Any) -> None:
    name = f"vram-steward-test-{os.getpid()}"
    assert hand_over_to_running(name, timeout_ms=200) is False  # nobody listens yet
    first = SingleInstance(name)
    assert first.listen()
    try:
        with qtbot.waitSignal(first.show_requested, timeout=3000):
            assert hand_over_to_running(name) is True
    finally:
        first.close()
    assert hand_over_to_running(name, timeout_ms=200) is False


def test_a_stale_socket_from_a_crash_is_replaced(qtbot: Any, tmp_path: Path) -> None:
    name = str(tmp_path / "steward.sock")
    Path(name).write_text("left over")  # what a killed instance leaves behind
    instance = SingleInstance(name)
    try:
        assert instance.listen()
        with qtbot.waitSignal(instance.show_requested, timeout=3000):
            assert hand_over_to_running(name)
    finally:
        instance.close()
