"""Where VRAM Steward keeps its files (platformdirs): config, state (audit log, API token), logs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "vram-steward"


def config_dir() -> Path:
    return Path(os.environ.get("VRAM_STEWARD_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME))


def state_dir() -> Path:
    return Path(os.environ.get("VRAM_STEWARD_STATE_DIR") or platformdirs.user_state_dir(APP_NAME))


def log_dir() -> Path:
    return Path(os.environ.get("VRAM_STEWARD_LOG_DIR") or platformdirs.user_log_dir(APP_NAME))


def default_config_file() -> Path:
    return config_dir() / "config.toml"


def audit_log_file() -> Path:
    return state_dir() / "audit.jsonl"


def log_file() -> Path:
    return log_dir() / "vram-steward.log"


def api_token_file() -> Path:
    return state_dir() / "api-token"


def api_endpoint_file() -> Path:
    """Written by the running instance: where its API listens (host, port), so the CLI finds it."""
    return state_dir() / "api-endpoint.json"


def app_icon_file() -> Path | None:
    """The app's PNG icon: in the checkout (resources/icons) or inside a PyInstaller bundle; None when this
    install has no icon file (then the icon theme's "vram-steward", installed by packaging/install.sh)."""
    import sys

    roots = [Path(__file__).resolve().parents[2]]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        roots.insert(0, Path(bundle))
    for root in roots:
        candidate = root / "resources" / "icons" / "vram-steward-128.png"
        if candidate.is_file():
            return candidate
    return None
