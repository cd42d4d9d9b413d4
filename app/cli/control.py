"""`vram-steward evict|pause|resume`: control the running instance through its local API.

GameMode can call these from its own hooks (~/.config/gamemode.ini: `[custom] start=vram-steward pause`,
`end=vram-steward resume`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

COMMANDS = {
    "evict": "free all VRAM we hold now (models come back when the GPU is free)",
    "pause": "free all VRAM and hold nothing until `resume`",
    "resume": "lift a pause; models come back when the GPU is free",
}


def register(sub: Any) -> None:
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=run, control=name)


def run(args: argparse.Namespace) -> int:
    from app.client import StewardClient
    from app.core.errors import VramError

    try:
        client = StewardClient()
        result = getattr(client, args.control)()
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    print(f"{args.control}: ok (state: {result.get('state')})")
    return 0
