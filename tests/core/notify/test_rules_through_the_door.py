"""Rules from notifications (issue 16): "Always ignore this app" saves `[[app_rules]]` (comments kept) and
applies it through the engine's door at once, recorded as AppRuleAdded; Undo removes it from the file and
the engine, recorded as AppRuleRemoved; a real engine on a simulated GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core import config
from app.core import events as ev
from app.core.engine.commands import ReloadNow
from app.core.gpu.simulated import ManualClock
from app.core.notify.rules import add_rule, remove_rule
from app.core.policy.actions import Command
from app.core.settings import AppRule

CONFIG = """\
schema_version = 2
# mine: keep me
resume_cooldown_secs = 600

[[app_rules]]
# my own rule
match = "blender"
action = "evict"
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    from app.core.wiring import build_runtime

    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    settings = config.load_settings(path)
    runtime = build_runtime(
        settings, simulate="game-launch", clock=ManualClock(0.0), with_api=False, audit=False
    )
    yield runtime.steward, path
    runtime.steward.shutdown()


def events(steward: Any, kind: type[ev.Event]) -> list[Any]:
    return [e for e in steward.snapshot.recent_events if isinstance(e, kind)]


def test_a_rule_is_saved_applied_at_once_and_undone(engine: tuple[Any, Path]) -> None:
    steward, path = engine
    steward.tick()
    new = add_rule(path, "steam:1091500", steward.submit, name="Cyberpunk 2077")
    steward.tick()  # the command is applied in the next tick, before it samples
    rule = AppRule("steam:1091500", "ignore")
    assert new.app_rules == (AppRule("blender", "evict"), rule)
    assert steward.settings.app_rules == new.app_rules  # the engine has it: classifier and policy follow
    assert config.load_settings(path).app_rules == new.app_rules
    text = path.read_text()
    assert "# mine: keep me" in text and "# my own rule" in text
    (added,) = events(steward, ev.AppRuleAdded)
    assert (added.match, added.action, added.name) == ("steam:1091500", "ignore", "Cyberpunk 2077")

    # Undo
    remove_rule(path, "steam:1091500", steward.submit)
    steward.tick()
    assert steward.settings.app_rules == (AppRule("blender", "evict"),)
    assert config.load_settings(path).app_rules == (AppRule("blender", "evict"),)
    assert "# my own rule" in path.read_text()  # the other entry stays as written
    (removed,) = events(steward, ev.AppRuleRemoved)
    assert removed.match == "steam:1091500"


def test_user_actions_leave_events(engine: tuple[Any, Path]) -> None:
    steward, _path = engine
    steward.tick()
    for command in (Command("pause"), Command("resume"), Command("evict_now"), ReloadNow()):
        future = steward.submit(command)
        steward.tick()
        assert future.done() and future.exception() is None
    kinds = [e.kind for e in steward.snapshot.recent_events]
    for kind in ("Paused", "Unpaused", "EvictRequested", "ReloadRequested"):
        assert kind in kinds, kinds
    assert future.result().command == "reload"
