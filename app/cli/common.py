"""Helpers shared by the commands."""

from __future__ import annotations

import argparse
import sys

from app.core.errors import VramError
from app.core.settings import Settings


def load_settings_or_exit(
    args: argparse.Namespace, *, check_files: bool = True, migrate: bool = True
) -> Settings:
    """The settings from --config or the default file; a broken file prints its errors and exits 1.
    `migrate=False` (read-only commands) reads a schema 1 file as migrated without rewriting it."""
    from app.core.config import load_settings

    try:
        return load_settings(getattr(args, "config", None), check_files=check_files, migrate=migrate)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        raise SystemExit(1) from None
