"""The tray app as a user meets it: a real process on a real (virtual) desktop, driven over D-Bus only.

`python -m app gui --simulate SCENARIO --no-api` runs on Xvfb with a private session bus, where
status-notifier-watcher stands in for the desktop panel (so Qt exports its tray icon as a
StatusNotifierItem with a dbusmenu) and dunst is the notification server. The test reads the icon's
tooltip and menu, toggles "Auto-pause for gaming" off and on (the settings file follows), waits for the
scenario's game, reads the notification at dunst, presses its "Resume now" button, and quits from the menu.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.dbus_session import wait_until
from tests.fixtures.desktop_session import DesktopSession, MenuEntry

REPO = Path(__file__).resolve().parents[3]

# The game-launch scenario, shortened: the game starts at 10 s and ends at 12 s (scenario time runs on the
# wall clock here). Time enough to toggle the setting off and on again before it starts.
GAME_AT_S = 10.0
SCENARIO = f"""\
description = "test: a short game on a 12 GiB card"
duration_s = 120

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
name = "llama-3.1-8b-instruct-q8_0"
size = "8 GiB"

[[timeline]]
at = {GAME_AT_S}
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242

[[timeline]]
at = {GAME_AT_S + 0.5}
event = "process_start"
pid = 4242
name = "Cyberpunk2077.exe"
used = "2 GiB"
kind = "graphics"

[[timeline]]
at = {GAME_AT_S + 2.0}
event = "process_exit"
pid = 4242

[[timeline]]
at = {GAME_AT_S + 2.0}
event = "game_signal_end"
name = "Cyberpunk 2077"
"""

# A long cooldown: after the game the models stay out until the user says "Resume now".
CONFIG = """\
schema_version = 2
resume_cooldown_secs = 600
"""


def _start_app(desktop: DesktopSession, tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    scenario = tmp_path / "short-game.toml"
    scenario.write_text(SCENARIO)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    log = tmp_path / "app-output.txt"
    env = desktop.env()
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "--config",
            str(config),
            "gui",
            "--simulate",
            str(scenario),
            "--no-api",
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, config, log


def _toggle_state(menu: list[MenuEntry], label: str) -> int | None:
    return next(e.toggle_state for e in menu if e.label == label)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_tray_menu_notification_action_and_quit_on_a_real_desktop(
    desktop: DesktopSession, tmp_path: Path
) -> None:
    assert desktop.dunst is not None
    panel = desktop.panel()
    process, config, log = _start_app(desktop, tmp_path)
    started = time.monotonic()
    try:
        item = panel.wait_for_item(timeout_s=20)

        # The tooltip: state and VRAM used / free per GPU, once the model is resident.
        tooltip = panel.wait_for_tooltip(item, lambda t: "Models resident" in t and "8.2 GiB / 12.0 GiB" in t)
        assert "GPU 0: 8.2 GiB / 12.0 GiB used, 3.6 GiB free" in tooltip, tooltip
        assert "Simulation: no real GPU touched" in tooltip  # the notice's short line; the story is elsewhere

        # The menu, as it opens.
        menu = panel.menu(item)
        labels = [e.label for e in menu if e.kind != "separator"]
        for expected in ("Models resident", "Auto-evict when other apps need VRAM", "Auto-pause for gaming"):
            assert expected in labels, labels
        for expected in ("Pause", "Evict now", "Dashboard...", "Settings...", "Quit"):
            assert expected in labels, labels
        assert any(label.startswith("llama-3.1-8b-instruct-q8_0: resident") for label in labels), labels
        assert _toggle_state(menu, "Auto-pause for gaming") == 1

        # Toggle auto-pause off: the settings file says so at once, and the menu shows it.
        panel.click(item, "Auto-pause for gaming")
        assert wait_until(lambda: "auto_pause_for_gaming = false" in config.read_text(), 5), (
            config.read_text()
        )
        assert _toggle_state(panel.menu(item), "Auto-pause for gaming") == 0
        # ... and on again, before the game starts.
        panel.click(item, "Auto-pause for gaming")
        on = wait_until(lambda: "auto_pause_for_gaming = true" in config.read_text(), 5)
        assert on, config.read_text()
        assert _toggle_state(panel.menu(item), "Auto-pause for gaming") == 1
        assert "resume_cooldown_secs = 600" in config.read_text()  # the rest of the file is kept
        assert time.monotonic() - started < GAME_AT_S, "too slow: the game started before the toggles ended"

        # The game starts: the models leave VRAM and dunst shows the notification.
        panel.wait_for_tooltip(item, lambda t: "Models freed for a game" in t, timeout_s=GAME_AT_S + 10)
        assert wait_until(lambda: desktop.dunst.displayed() >= 1, 10), "no notification reached dunst"
        # The game ends; the long cooldown keeps the models out ...
        panel.wait_for_tooltip(item, lambda t: "Waiting for the GPU to stay free" in t, timeout_s=10)
        # ... until the user presses the notification's "Resume now".
        desktop.dunst.press("Resume now")
        panel.wait_for_tooltip(
            item, lambda t: "Models resident" in t and "8.2 GiB / 12.0 GiB used" in t, timeout_s=10
        )

        shown = desktop.dunst.history()
        summaries = [n["summary"] for n in shown]
        assert summaries[0] == "Cyberpunk 2077 started: freed 8.0 GiB (1 model)", shown
        assert shown[0]["appname"] == "VRAM Steward"
        assert "llama-3.1-8b-instruct-q8_0 left GPU 0" in shown[0]["body"]
        assert "GPU free again: models reloaded" in summaries, shown

        # Quit from the menu: the process ends by itself, with exit code 0, within a few seconds.
        panel.click(item, "Quit")
        assert process.wait(timeout=10) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    output = log.read_text()
    assert "Traceback" not in output, output
    assert time.monotonic() - started < 60
