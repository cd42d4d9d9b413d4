"""The files shipped inside the `app` package (app/data): found through importlib.resources, so one lookup
works in a source checkout, an installed wheel and the PyInstaller bundle alike. resources/icons in the
repository is a link to app/data/icons."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

APP_ICON = "vram-steward"  # also the icon-theme name that packaging/install.sh installs
APP_ICON_SIZES_PX = (48, 128, 256)  # the PNG renderings of the app icon (packaging/render_icons.py)
STATE_ICONS = ("resident", "evicted-for-game", "paused", "no-gpu", "error", "idle")  # the tray's SVGs


def icons_dir() -> Path:
    """app/data/icons inside the installed package."""
    return Path(str(resources.files("app").joinpath("data", "icons")))


def shipped_icon_names() -> list[str]:
    """Every file name the app needs in icons_dir(): the app icon (SVG and PNGs) and each tray state's SVG."""
    names = {f"{APP_ICON}.svg", *(f"{APP_ICON}-{size}.png" for size in APP_ICON_SIZES_PX)}
    names.update(f"{state}.svg" for state in STATE_ICONS)
    return sorted(names)


def icon_file(file_name: str) -> Path | None:
    """The shipped icon `file_name` ("paused.svg", "vram-steward-128.png"), or None if this install lacks it
    (then callers fall back: the icon theme's APP_ICON, a shape drawn in code)."""
    path = icons_dir() / file_name
    if path.is_file():
        return path
    logger.debug("icon %s is not in %s", file_name, path.parent)
    return None


def state_icon_file(state: str) -> Path | None:
    """The tray's SVG for a state ("resident", "paused", ...)."""
    return icon_file(f"{state}.svg")


def app_icon_file(size_px: int = 128) -> Path | None:
    """The app's PNG icon (for notifications, which want a bitmap)."""
    return icon_file(f"{APP_ICON}-{size_px}.png")
