"""Start with the desktop session: an XDG autostart entry, ~/.config/autostart/vram-steward.desktop."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from app.core.atomic import write_atomic

logger = logging.getLogger(__name__)

FILE_NAME = "vram-steward.desktop"


def autostart_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "autostart"


def autostart_file() -> Path:
    return autostart_dir() / FILE_NAME


def default_command() -> str:
    """How this installation is started: the `vram-steward` script if on PATH, else this Python."""
    import shutil

    script = shutil.which("vram-steward")
    if script:
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m app"


def desktop_entry(command: str) -> str:
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=VRAM Steward\n"
        "Comment=Keeps local LLMs in VRAM while the GPU is free\n"
        f"Exec={command} gui\n"
        "Icon=vram-steward\n"
        "Terminal=false\n"
        "Categories=System;Monitor;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def is_enabled() -> bool:
    return autostart_file().exists()


def set_enabled(on: bool, command: str | None = None) -> Path:
    """Write or remove the entry (atomically); returns its path."""
    path = autostart_file()
    if on:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, desktop_entry(command or default_command()))
        logger.info("autostart on: %s", path)
    else:
        path.unlink(missing_ok=True)
        logger.info("autostart off: removed %s", path)
    return path
