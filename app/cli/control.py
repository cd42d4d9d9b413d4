"""`vram-steward evict|pause|resume|freeze|thaw`: control the running instance through its local API.

GameMode can call these from its own hooks (~/.config/gamemode.ini: `[custom] start=vram-steward pause`,
`end=vram-steward resume`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

COMMANDS = {
    "evict": "free all VRAM we hold now (models come back when the GPU is free)",
    "pause": "free all VRAM and hold nothing until `resume`",
    "resume": "lift a pause; models come back when the GPU is free",
}


APP_COMMANDS = {
    "freeze": 'freeze an app of a `kind = "freeze"` entry now; it stays frozen until `thaw`',
    "thaw": "restore a frozen app (once its VRAM is free: never a restore that could run out)",
}


def register(sub: Any) -> None:
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=run, control=name)
    for name, help_text in APP_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("app", help='the entry\'s name (its `name`, else its `match`), e.g. "ComfyUI"')
        p.set_defaults(func=run_app, control=name)


def run_app(args: argparse.Namespace) -> int:
    """freeze = the engine's unload of that app (kept out until thawed), thaw = its load."""
    from app.client import StewardClient
    from app.core.errors import VramError

    try:
        client = StewardClient()
        apps = {m["name"]: m for m in client.models()}
        found = apps.get(args.app)
        if found is None or found.get("holder") != "freeze":
            frozen = sorted(name for name, m in apps.items() if m.get("holder") == "freeze")
            what = "a model, not an app VRAM Steward freezes" if found is not None else "not known"
            print(
                f"error: {args.app!r} is {what}. Apps to freeze: {', '.join(frozen) or 'none'} "
                '(add one with [[servers]] kind = "freeze"; see docs/freezing.md). '
                "A model is unloaded and loaded with `vram-steward models unload|load NAME`.",
                file=sys.stderr,
            )
            return 1
        if args.control == "freeze":
            result = client.unload(args.app)
        else:
            result = client.request("POST", f"/v1/models/{quote(args.app, safe='')}/load", {})
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    model = result.get("model") or {}
    state = model.get("state", "?")
    why = f" ({model['last_error']})" if model.get("last_error") else ""
    print(f"{args.control} {args.app}: {state}{why}")
    return 0


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
