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


def game_peaks_file() -> Path:
    """What each game needed last time (app/core/engine/game_peaks.py)."""
    return state_dir() / "games.json"


def log_file() -> Path:
    return log_dir() / "vram-steward.log"


def api_token_file() -> Path:
    return state_dir() / "api-token"


def api_endpoint_file() -> Path:
    """Written by the running instance: where its API listens (host, port), so the CLI finds it."""
    return state_dir() / "api-endpoint.json"


def runtime_dir() -> Path:
    """Per-user runtime files (the engine lock, the tray's single-instance socket):
    $XDG_RUNTIME_DIR/vram-steward, else `run/` under the state dir (VRAM_STEWARD_RUNTIME_DIR overrides both).
    Only a path: `app.core.instance.private_runtime_dir()` creates it with mode 0700."""
    override = os.environ.get("VRAM_STEWARD_RUNTIME_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / APP_NAME
    return state_dir() / "run"


def engine_lock_file() -> Path:
    """Held (flock) by the one engine of this user, the tray app or the daemon; records its pid and kind."""
    return runtime_dir() / "engine.lock"


def tray_socket_file() -> Path:
    """The tray app's single-instance socket: a second launch asks the first to show its dashboard."""
    return runtime_dir() / "tray.sock"
