"""GameModeWatcher against the real gamemoded on a private session bus (no mocks)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from app.core.aio_thread import AsyncioThread
from app.core.signals.gamemode import GAMEMODE_NAME, GameModeWatcher
from tests.fixtures.dbus_session import GameModeDaemon, PrivateBus, start_private_bus, wait_until


def _pids(watcher: GameModeWatcher) -> set[int | None]:
    return {signal.pid for signal in watcher.active()}


def test_registered_game_is_reported_with_its_pid_and_name_and_goes_away_when_unregistered(
    aio, clock, gamemode_daemon: GameModeDaemon, private_bus: PrivateBus, spawn
) -> None:
    gamemode_daemon.start()
    changes = threading.Event()
    watcher = GameModeWatcher(aio, bus_address=private_bus.address, clock=clock, on_change=changes.set)
    watcher.start().result(timeout=5)
    assert watcher.status == "watching"
    assert watcher.active() == ()

    game = spawn("cyberpunk2077")
    clock.advance(5)
    gamemode_daemon.register(game.pid)
    assert wait_until(lambda: game.pid in _pids(watcher)), "GameRegistered never reached the watcher"
    (signal,) = watcher.active()
    assert (signal.name, signal.source, signal.pid) == ("cyberpunk2077", "gamemode", game.pid)
    assert signal.exe is not None and Path(signal.exe).name == "cyberpunk2077"
    assert signal.started_at == clock.now_s
    assert changes.is_set()

    gamemode_daemon.unregister(game.pid)
    assert wait_until(lambda: watcher.active() == ()), "GameUnregistered never reached the watcher"
    watcher.close()
    assert watcher.status == "closed"


def test_games_registered_before_the_watcher_started_come_from_list_games(
    aio, clock, gamemode_daemon: GameModeDaemon, private_bus: PrivateBus, spawn
) -> None:
    gamemode_daemon.start()
    first, second = spawn("witcher3"), spawn("factorio")
    gamemode_daemon.register(first.pid)
    gamemode_daemon.register(second.pid)

    watcher = GameModeWatcher(aio, bus_address=private_bus.address, clock=clock)
    watcher.start().result(timeout=5)  # done = ListGames has answered
    assert {(s.name, s.pid) for s in watcher.active()} == {("witcher3", first.pid), ("factorio", second.pid)}
    watcher.close()


def test_a_watcher_started_before_the_daemon_picks_it_up_and_notices_it_stopping(
    aio, clock, gamemode_daemon: GameModeDaemon, private_bus: PrivateBus, spawn
) -> None:
    watcher = GameModeWatcher(aio, bus_address=private_bus.address, clock=clock)
    watcher.start().result(timeout=5)
    assert watcher.status == "no_daemon"
    assert watcher.active() == ()

    gamemode_daemon.start()
    assert wait_until(lambda: watcher.status == "watching"), "NameOwnerChanged was not noticed"
    game = spawn("eldenring")
    gamemode_daemon.register(game.pid)
    assert wait_until(lambda: _pids(watcher) == {game.pid})

    gamemode_daemon.stop()  # the daemon goes away while a game is registered: no games, not an error
    assert wait_until(lambda: watcher.status == "no_daemon" and watcher.active() == ())
    watcher.close()


def test_no_daemon_means_no_games_and_watching_never_activates_it(
    aio, clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bus that WOULD start GameMode on demand: its service file runs a script that leaves a marker.
    services = tmp_path / "services"
    services.mkdir()
    marker = tmp_path / "activated"
    script = tmp_path / "fake-gamemoded.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    (services / f"{GAMEMODE_NAME}.service").write_text(
        f"[D-BUS Service]\nName={GAMEMODE_NAME}\nExec={script}\n"
    )
    bus = start_private_bus(tmp_path, service_dir=services)
    try:
        watcher = GameModeWatcher(aio, bus_address=bus.address, clock=clock)
        watcher.start().result(timeout=5)
        assert watcher.active() == ()
        assert watcher.status == "no_daemon"
        assert not bus.name_has_owner(GAMEMODE_NAME)
        assert not marker.exists(), "the watcher started the GameMode service through D-Bus activation"
        watcher.close()

        # Control: a plain method call on this bus does activate the service, so the check above can fail.
        with pytest.raises(RuntimeError):
            bus.send(
                f"--dest={GAMEMODE_NAME}",
                "/com/feralinteractive/GameMode",
                f"{GAMEMODE_NAME}.ListGames",
                timeout_s=1.0,
            )
        assert wait_until(marker.exists), "the activation trap did not fire for a plain call"
    finally:
        bus.stop()


def test_no_session_bus_at_all_reports_no_games_and_logs_once_at_info(
    aio: AsyncioThread, clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    caplog.set_level(logging.INFO, logger="app.core.signals.gamemode")
    watcher = GameModeWatcher(aio, clock=clock)
    watcher.start().result(timeout=5)
    assert watcher.status == "no_bus"
    assert watcher.active() == ()
    assert watcher.active() == ()
    messages = [r for r in caplog.records if "GameMode watcher inactive" in r.getMessage()]
    assert len(messages) == 1 and messages[0].levelno == logging.INFO
    watcher.close()


def test_a_bus_address_that_leads_nowhere_is_the_same_as_no_bus(aio, clock, tmp_path: Path) -> None:
    watcher = GameModeWatcher(aio, bus_address=f"unix:path={tmp_path}/no-such-socket", clock=clock)
    watcher.start().result(timeout=5)
    assert watcher.status == "no_bus"
    assert watcher.active() == ()
    watcher.close()


def test_the_watcher_notices_its_bus_going_away(aio, clock, tmp_path: Path) -> None:
    bus = start_private_bus(tmp_path)
    watcher = GameModeWatcher(aio, bus_address=bus.address, clock=clock)
    watcher.start().result(timeout=5)
    assert watcher.status == "no_daemon"
    bus.stop()
    assert wait_until(lambda: watcher.status == "no_bus")
    assert watcher.active() == ()
    watcher.close()


def test_watchers_started_while_games_come_and_go_agree_with_the_daemon_in_the_end(
    aio, clock, gamemode_daemon: GameModeDaemon, private_bus: PrivateBus, spawn
) -> None:
    gamemode_daemon.start()
    games = [spawn(f"game{i}") for i in range(4)]
    watchers: list[GameModeWatcher] = []
    for round_ in range(3):  # registrations and removals race with each watcher's ListGames
        for i, game in enumerate(games):
            if (i + round_) % 2 == 0:
                gamemode_daemon.register(game.pid)
            elif round_ > 0:  # registered in the previous round
                gamemode_daemon.unregister(game.pid)
        watchers.append(GameModeWatcher(aio, bus_address=private_bus.address, clock=clock))
    listed = private_bus.send(
        f"--dest={GAMEMODE_NAME}", "/com/feralinteractive/GameMode", f"{GAMEMODE_NAME}.ListGames"
    )
    expected = {g.pid for g in games if f"int32 {g.pid}" in listed}
    assert expected, "the churn should leave some games registered"
    for watcher in watchers:
        assert wait_until(lambda w=watcher: _pids(w) == expected), f"{_pids(watcher)} != {expected}"
        watcher.close()
