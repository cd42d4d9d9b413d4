"""`vram-steward`: the tray app by default; `daemon`, `status`, `config`, `models`, `evict|pause|resume`."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Sequence
from pathlib import Path

from app import __version__, cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vram-steward",
        description="Keeps local LLMs in VRAM while the GPU is free; frees it when a game needs it.",
    )
    parser.add_argument("--version", action="version", version=f"vram-steward {__version__}")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="settings file (default: platform config dir)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to the terminal")
    parser.add_argument(
        "--self-test", action="store_true", help="start every part this machine can run, one line each; exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in cli.command_modules():
        module = cli.load(name)
        module.register(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    multiprocessing.freeze_support()  # a frozen bundle's spawned child (the residency host) stops here
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--self-test" in argv:
        from app import selftest

        return selftest.main()
    parser = build_parser()
    args = parser.parse_args(argv)
    from app.core.logs import setup_logging

    setup_logging(verbose=args.verbose)
    func = getattr(args, "func", None)
    if func is None:  # plain `vram-steward`: the tray app (or the daemon where there is no display)
        from app.cli import gui

        return gui.run(args)
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
