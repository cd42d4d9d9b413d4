"""Issue 16 in the tray app (Qt offscreen, a real engine on a simulated GPU): a broken settings file at start
(defaults, the red icon, a window naming each problem with Open file and Check again); the rules list with
its Remove buttons; the popup's countdown and Reload now; notifications that reach no one become a notice;
the tray balloon is not "available" where it would go to a dead notification server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QSystemTrayIcon

from app.core import config
from app.core import events as ev
from app.core.config import Settings
from app.core.holders import ModelState
from app.core.settings import AppRule
from app.ui.application import StewardApp
from app.ui.balloon import NOTIFICATIONS_NAME, WATCHER_NAME, TrayBalloonNotifier
from app.ui.popup import TrayPopup
from app.ui.presenter import present
from app.ui.rules_view import RulesView
from app.ui.settings_problems import SettingsProblemsWindow, problems_of
from app.ui.worker import StewardWorker
from tests.fixtures import ui_snapshots as snaps
from tests.fixtures.ui_engine import SteppedSteward

BROKEN = 'schema_version = 2\nauto_evict = "yes please"\nresume_cooldown_secs = -5\n'
FIXED = "schema_version = 2\nauto_evict = false\n"


def broken_problems(path: Path) -> tuple[str, ...]:
    with pytest.raises(config.ConfigErrors) as caught:
        config.load_settings(path)
    return problems_of(caught.value)


def test_the_problems_window_names_each_problem_opens_the_file_and_checks_again(
    qtbot: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(BROKEN)
    problems = broken_problems(path)
    assert len(problems) == 2
    opened: list[QUrl] = []
    window = SettingsProblemsWindow(path, problems, open_url=lambda url: opened.append(url) or True)
    qtbot.addWidget(window)
    lines = window.problem_lines()
    assert any("auto_evict" in line and ":2" in line for line in lines), lines  # file:line, key, expected
    assert any("resume_cooldown_secs" in line for line in lines), lines
    window.open_button.click()
    assert opened == [QUrl.fromLocalFile(str(path))]
    path.write_text('schema_version = 2\nauto_evict = "still no"\n')  # one fixed, one left
    window.check_button.click()
    assert len(window.problem_lines()) == 1 and "auto_evict" in window.problem_lines()[0]
    path.write_text(FIXED)
    with qtbot.waitSignal(window.fixed, timeout=2000) as fixed:
        window.check_button.click()
    assert fixed.args[0].auto_evict is False


def make_app(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, path: Path, **kw: Any
) -> tuple[StewardApp, SteppedSteward]:
    settings = config.load_settings(path) if not kw.get("settings_problems") else Settings(source=path)
    sim_runtime.steward.update_settings(settings)
    stepped = SteppedSteward(sim_runtime.steward, scenario_clock, poll_s=0.02)
    app = StewardApp(StewardWorker(stepped), settings, path, tray_available=False, **kw)
    qtbot.addWidget(app.dashboard)
    return app, stepped


def test_a_broken_settings_file_starts_the_app_red_on_defaults_until_it_loads(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(BROKEN)
    problems = broken_problems(path)
    app, stepped = make_app(qtbot, sim_runtime, scenario_clock, path, settings_problems=problems)
    try:
        assert app.view.icon == "error"
        app.start()
        assert app.problems_window is not None and app.problems_window.isVisible()
        assert app.problems_window.problem_lines() == list(problems)
        qtbot.waitUntil(lambda: app.snapshot is not None, timeout=3000)
        app.render()
        assert app.tray.icon_name == "error"  # red, whatever the engine's state
        assert "Settings file broken: using defaults (2 problems)" in app.view.notes
        assert all(problem in app.view.notice_detail for problem in problems)  # the dashboard's story
        assert path.read_text() == BROKEN

        path.write_text(FIXED)  # the user fixes it, then presses Check again
        app.problems_window.check_button.click()
        qtbot.waitUntil(lambda: stepped.steward.settings.auto_evict is False, timeout=3000)
        assert app.settings.auto_evict is False
        assert app.tray.icon_name != "error" and not any("Settings file" in n for n in app.view.notes)
    finally:
        app.shutdown()


def test_the_rules_list_shows_each_rule_and_remove_takes_it_out_of_file_and_engine(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'schema_version = 2\n[[app_rules]]\nmatch = "steam:1091500"\naction = "ignore"\n'
        '[[app_rules]]\n# mine\nmatch = "blender"\naction = "evict"\n'
    )
    app, stepped = make_app(qtbot, sim_runtime, scenario_clock, path)
    try:
        app.start()
        view = app.rules_view
        assert app.dashboard.rules_widget is view
        assert view.rule_lines()[0].startswith("Steam game 1091500 (ignore")
        view.remove_button("steam:1091500").click()
        assert config.load_settings(path).app_rules == (AppRule("blender", "evict"),)
        assert "# mine" in path.read_text()
        qtbot.waitUntil(
            lambda: stepped.steward.settings.app_rules == (AppRule("blender", "evict"),), timeout=3000
        )
        assert len(view.rule_lines()) == 1
        qtbot.waitUntil(
            lambda: any("Rule removed" in line for line in app.dashboard.event_lines()), timeout=3000
        )  # the user's own action, in the Events tab
    finally:
        app.shutdown()


def test_the_empty_rules_list_says_how_to_add_one(qtbot: Any) -> None:
    rules: list[AppRule] = []
    view = RulesView(lambda: rules, lambda match: None)
    qtbot.addWidget(view)
    assert not view.empty.isHidden() and view.rule_lines() == []
    rules.append(AppRule("cyberpunk2077", "ignore"))
    view.refresh()
    assert view.empty.isHidden() and "cyberpunk2077" in view.rule_lines()[0]


def test_the_popup_counts_down_and_reloads_now(qtbot: Any) -> None:
    import dataclasses

    reloads: list[bool] = []
    popup = TrayPopup(lambda: None, reload_now=lambda: reloads.append(True))
    qtbot.addWidget(popup)
    snap = snaps.snapshot("cooldown", models=(snaps.model(ModelState.EVICTED),))
    snap = dataclasses.replace(snap, resume_at=snap.telemetry.taken_at + 23.0)
    popup.set_view(present(snap, Settings()))
    assert popup.wait.text() == "Models come back in 23 s" and not popup.reload_button.isHidden()
    popup.reload_button.click()
    assert reloads == [True]
    popup.set_view(present(snaps.snapshot("active"), Settings()))
    assert popup.wait.isHidden() and popup.reload_button.isHidden()


def test_notifications_that_reach_no_one_become_a_notice(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    config.ensure_default_config(path)
    app, _ = make_app(qtbot, sim_runtime, scenario_clock, path)
    try:
        app.start()
        app._on_notification_problem(
            "Notifications are not shown (desktop: not available); they go to the log"
        )
        assert "Notifications are not shown" in app.view.notes
        assert "desktop: not available" in app.view.notice_detail
        assert "desktop: not available" in app.dashboard.notice_detail.text()
        app._on_notification_problem(None)
        assert "Notifications are not shown" not in app.view.notes
    finally:
        app.shutdown()


@pytest.mark.parametrize(
    ("owners", "available"),
    [
        ({WATCHER_NAME: True, NOTIFICATIONS_NAME: False}, False),  # SNI balloon -> a dead server
        ({WATCHER_NAME: True, NOTIFICATIONS_NAME: True}, True),
        ({WATCHER_NAME: False, NOTIFICATIONS_NAME: False}, True),  # an XEmbed tray draws it itself
    ],
)
def test_a_tray_balloon_without_anyone_to_show_it_is_not_available(
    qtbot: Any, monkeypatch: pytest.MonkeyPatch, owners: dict[str, bool], available: bool
) -> None:
    monkeypatch.setattr(QSystemTrayIcon, "isSystemTrayAvailable", staticmethod(lambda: True))
    monkeypatch.setattr(QSystemTrayIcon, "supportsMessages", staticmethod(lambda: True))
    icon = QSystemTrayIcon()
    monkeypatch.setattr(icon, "isVisible", lambda: True)

    async def has_owner(name: str) -> bool:
        return owners[name]

    balloon = TrayBalloonNotifier(icon, name_has_owner=has_owner)
    assert asyncio.run(balloon.available()) is available


def test_user_actions_are_described_in_the_events_list() -> None:
    from app.core.notify.messages import describe

    assert describe(ev.ReloadRequested(at=0)) == "You chose Reload now"
    assert describe(ev.EvictRequested(at=0, gpu=1)) == "You chose Evict now on GPU 1"
    assert describe(ev.Unpaused(at=0)) == "Resumed by you"
    added = ev.AppRuleAdded(at=0, match="cyberpunk2077", action="ignore", name="Cyberpunk 2077")
    assert describe(added) == 'Rule added: Cyberpunk 2077 (match = "cyberpunk2077") is always ignored'
