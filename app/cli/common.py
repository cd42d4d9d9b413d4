"""Helpers shared by the commands."""

from __future__ import annotations

import argparse
import sys

from app.core.errors import VramError
from app.core.settings import Settings


def load_settings_or_exit(args: argparse.Namespace, *, check_files: bool = True) -> Settings:
    """The settings from --config or the default file; a broken file prints its errors and exits 1."""
    from app.core.config import load_settings

    try:
        return load_settings(getattr(args, "config", None), check_files=check_files)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        raise SystemExit(1) from None
