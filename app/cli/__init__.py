"""The command line: one module per command; each has `register(subparsers)` and sets `func=run`."""

from __future__ import annotations

import importlib

# The order in which commands appear in --help.
COMMAND_MODULES = (
    "status",
    "config_cmd",
    "models",
    "games",
    "vulkan_layer",
    "daemon",
    "control",
    "discover",
    "replay",
    "gui",
)


def command_modules() -> list[str]:
    return list(COMMAND_MODULES)


def load(name: str) -> object:
    return importlib.import_module(f"{__name__}.{name}")
