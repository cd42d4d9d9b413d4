"""Issue 16, rules from identities, as a user meets them on a real desktop (Xvfb, a StatusNotifierItem
watcher, dunst), driven over D-Bus only: "Always ignore this app" pressed in a game's notification and in a
pressure notification writes a rule that matches the next launch (no eviction, no offer again); Undo in the
confirmation removes it (the next launch is evicted again); the countdown before models come back shows in
the tooltip and the menu, and the menu's "Reload now" brings them back.

Scenario time runs on the wall clock from the app's start; each phase waits for what the app shows."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.dbus_session import wait_until
from tests.fixtures.desktop_session import DesktopSession, TrayPanel
from tests.fixtures.notify_desktop import Dunst
from tests.ui.desktop.app_process import AppProcess, start_app

G1, G2 = 8.0, 24.0  # the same game, launched twice (GameMode names it; its process is Cyberpunk2077.exe)
P1, P2, P3 = 36.0, 52.0, 68.0  # blender grows by 3 GiB, three times


def _game(at: float, pid: int) -> str:
    return f"""
[[timeline]]
at = {at}
event = "process_start"
pid = {pid}
name = "Cyberpunk2077.exe"
used = "2 GiB"
kind = "graphics"

[[timeline]]
at = {at}
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = {pid}

[[timeline]]
at = {at + 2.0}
event = "process_exit"
pid = {pid}

[[timeline]]
at = {at + 2.0}
event = "game_signal_end"
name = "Cyberpunk 2077"
"""


def _blender(at: float, pid: int) -> str:
    return f"""
[[timeline]]
at = {at}
event = "process_start"
pid = {pid}
name = "blender"
used = "3 GiB"
kind = "compute"

[[timeline]]
at = {at + 8.0}
event = "process_exit"
pid = {pid}
"""


SCENARIO = (
    """\
description = "test: a game twice, then blender three times, on a 12 GiB card"
duration_s = 200

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 3060"
uuid = "GPU-5e1a0c7e-0000-4000-8000-000000003060"
total = "12 GiB"
reserved = "256 MiB"

[[processes]]
pid = 1201
name = "Xorg"
used = "180 MiB"
kind = "graphics"

[[models]]
name = "llama-3.1-8b-instruct-q4"
size = "4 GiB"
"""
    + _game(G1, 4242)
    + _game(G2, 4343)
    + _blender(P1, 5151)
    + _blender(P2, 5252)
    + _blender(P3, 5353)
)

# A long cooldown: after each eviction the models stay out, counting down, until "Reload now".
CONFIG = """\
schema_version = 2
# the user's own comment, kept through every rule written and removed
resume_cooldown_secs = 600
"""


def _reload_now(panel: TrayPanel, item: str) -> None:
    """The countdown shows in the tooltip and heads the menu; "Reload now" brings the models back."""
    tooltip = panel.wait_for_tooltip(item, lambda t: "Models come back in" in t, timeout_s=15)
    assert re.search(r"Models come back in \d+ (s|min)", tooltip), tooltip
    labels = [e.label for e in panel.menu(item) if e.kind != "separator"]
    assert labels[0].startswith("Models come back in") and "Reload now" in labels, labels
    panel.click(item, "Reload now")
    panel.wait_for_tooltip(item, lambda t: "Models resident" in t, timeout_s=15)


def _until(app: AppProcess, at_s: float, started: float) -> None:
    """Wait until scenario second `at_s` (the app started at `started`)."""
    left = started + at_s - time.monotonic()
    if left > 0:
        time.sleep(left)


def _games_started(app: AppProcess) -> int:
    return sum(1 for e in app.audit() if e["type"] == "GameStarted" and e["name"] == "Cyberpunk 2077")


def _evictions(app: AppProcess, reason: str) -> int:
    return sum(1 for e in app.audit() if e["type"] == "ModelsEvicted" and e["reason"] == reason)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_rules_from_game_and_pressure_notifications_match_the_next_launch_and_undo_removes_them(
    desktop: DesktopSession, tmp_path: Path
) -> None:
    dunst = desktop.dunst
    assert dunst is not None
    panel = desktop.panel()
    app = start_app(desktop, tmp_path, scenario=SCENARIO, config_text=CONFIG)
    started = time.monotonic()
    try:
        item = panel.wait_for_item(timeout_s=20)
        panel.wait_for_tooltip(item, lambda t: "Models resident" in t, timeout_s=G1)

        # The game starts: evicted, and the notification offers to ignore it.
        panel.wait_for_tooltip(item, lambda t: "Models freed for a game" in t, timeout_s=G1 + 10)
        assert wait_until(lambda: dunst.displayed() >= 1, 10), "no notification reached dunst"
        # The rule names the executable (never the GameMode title), kept with the user's comment.
        pressed = _press_until(
            dunst, "#Always ignore this app (Cyberpunk", lambda: 'match = "cyberpunk2077"' in _text(app)
        )
        assert pressed, _text(app)
        assert "# the user's own comment" in app.config.read_text()
        assert wait_until(lambda: any(e["type"] == "AppRuleAdded" for e in app.audit()), 10)

        # The countdown after the game, and Reload now (from the menu).
        _reload_now(panel, item)

        # The same game again: no eviction, no notification offering anything again.
        _until(app, G2 + 2.5, started)
        assert _games_started(app) == 2, app.audit()
        assert _evictions(app, "game") == 1
        assert "Models resident" in panel.tooltip(item)
        summaries = [n["summary"] for n in dunst.history()]
        assert sum("Cyberpunk 2077 started" in s for s in summaries) == 1, summaries
        assert "Cyberpunk 2077 will be ignored" in summaries, summaries  # the confirmation

        # blender grows: pressure. Ignore it from that notification, then Undo in the confirmation.
        _until(app, P1, started)
        panel.wait_for_tooltip(item, lambda t: "another app needs VRAM" in t, timeout_s=10)
        assert _press_until(
            dunst, "#Always ignore this app (blender", lambda: 'match = "blender"' in _text(app)
        )
        assert _press_until(
            dunst, "#Undo (blender will be ignored", lambda: 'match = "blender"' not in _text(app)
        )
        assert 'match = "cyberpunk2077"' in app.config.read_text()  # the other rule stays as it was
        assert wait_until(lambda: any(e["type"] == "AppRuleRemoved" for e in app.audit()), 10)
        _until(app, P1 + 8.5, started)  # blender exits
        _reload_now(panel, item)

        # Undone: blender's next launch is pressure again; this time the rule stays.
        _until(app, P2, started)
        panel.wait_for_tooltip(item, lambda t: "another app needs VRAM" in t, timeout_s=10)
        assert _evictions(app, "pressure") == 2
        assert _press_until(
            dunst, "#Always ignore this app (blender", lambda: 'match = "blender"' in _text(app)
        )
        _reload_now(panel, item)  # blender (still running) is ignored: the model fits beside it

        # Its third launch: no eviction.
        _until(app, P3 + 3.0, started)
        assert _evictions(app, "pressure") == 2, [e for e in app.audit() if e["type"] == "ModelsEvicted"]
        assert "Models resident" in panel.tooltip(item)
        user_actions = [e["type"] for e in app.audit() if e["type"] in ("ReloadRequested", "AppRuleAdded")]
        assert user_actions.count("ReloadRequested") == 3 and user_actions.count("AppRuleAdded") == 3

        panel.click(item, "Quit")
        assert app.process.wait(timeout=15) == 0, app.output()
    finally:
        app.stop()
    assert "Traceback" not in app.output(), app.output()


def _text(app: AppProcess) -> str:
    return app.config.read_text()


def _press_until(dunst: Dunst, action: str, done: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    """Press a displayed notification's button (the first whose dmenu line contains `action`) until what it
    does is done: dunst ignores a `context` that comes while it is still busy with the one before."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dunst.press(action)
        if wait_until(done, 1.5):
            return True
    return False
