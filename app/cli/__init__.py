"""The command line: one module per command; each has `register(subparsers)` and sets `func=run`."""

from __future__ import annotations

import importlib
import pkgutil

# The order in which commands appear in --help.
COMMAND_MODULES = ("status", "config_cmd", "models", "daemon", "control", "replay", "gui")


def command_modules() -> list[str]:
    """Command modules that exist in this build (a command still being written is simply absent)."""
    present = {m.name for m in pkgutil.iter_modules(__path__)}
    return [name for name in COMMAND_MODULES if name in present]


def load(name: str) -> object:
    return importlib.import_module(f"{__name__}.{name}")
