"""Logging: a rotating file in the platform log dir, and the terminal (warnings, or everything with -v)."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from app.core import paths


def setup_logging(*, verbose: bool = False) -> None:
    root = logging.getLogger()
    if getattr(root, "_vram_steward_configured", False):
        return
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    try:
        path = paths.log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=2 * 1024 * 1024, backupCount=3)
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    except OSError as exc:  # a read-only home must not stop the app
        logging.getLogger(__name__).warning("cannot write the log file: %s", exc)
    root._vram_steward_configured = True  # type: ignore[attr-defined]
