"""The desktop entries pass desktop-file-validate (Debian package desktop-file-utils): the menu entry we
install, and the autostart entry the tray's toggle writes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from app.core.resources import icons_dir
from app.ui.autostart import desktop_entry

ROOT = Path(__file__).resolve().parents[2]
DESKTOP_FILE = ROOT / "resources" / "vram-steward.desktop"
ICONS = icons_dir()


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("desktop-file-validate")
    if tool is None:
        pytest.fail("desktop-file-validate is not installed: apt-get install desktop-file-utils")
    return subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=30)


def entry(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return parser["Desktop Entry"]


def test_the_menu_entry_is_valid_with_no_hint_at_all() -> None:
    result = validate(DESKTOP_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_the_menu_entry_starts_the_tray_with_our_icon() -> None:
    desktop = entry(DESKTOP_FILE)
    assert desktop["Exec"] == "vram-steward gui"
    assert desktop["TryExec"] == "vram-steward"
    assert desktop["Icon"] == "vram-steward"
    assert (ICONS / f"{desktop['Icon']}.svg").is_file()
    for size in (48, 128, 256):
        assert (ICONS / f"{desktop['Icon']}-{size}.png").is_file()


def test_the_png_icons_are_renders_of_their_size() -> None:
    for size in (48, 128, 256):
        header = (ICONS / f"vram-steward-{size}.png").read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
        assert (width, height) == (size, size)


def test_the_autostart_entry_the_tray_writes_has_no_errors_or_warnings(tmp_path: Path) -> None:
    path = tmp_path / "vram-steward.desktop"
    path.write_text(desktop_entry("/home/ada/.local/bin/vram-steward"), encoding="utf-8")

    result = validate(path)

    assert result.returncode == 0, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if ": error: " in line or ": warning: " in line]
    assert problems == []
    assert entry(path)["Icon"] == entry(DESKTOP_FILE)["Icon"]
