"""The exclusive-app list against real processes, and the process-table scanner they share with Steam."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from app.core.policy.signals import CompositeSignals, GameSignal, merge
from app.core.signals.exclusive_apps import ExclusiveApps, matching_entry, normalize_app_name
from app.core.signals.process_scan import (
    ProcessInfo,
    ProcessScanner,
    read_proc_directly,
    read_process_table,
    read_with_psutil,
)


def test_a_process_on_the_list_is_a_signal_and_one_not_on_it_is_not(spawn, clock) -> None:
    blender = spawn("blender")
    krita = spawn("krita")
    apps = ExclusiveApps(ProcessScanner(interval_s=1.0, clock=clock), ["Blender", "DaVinci Resolve"])
    signals = apps.active()
    assert [(s.name, s.source, s.pid) for s in signals] == [("Blender", "exclusive_app", blender.pid)]
    assert signals[0].exe is not None and Path(signals[0].exe).name == "blender"
    assert krita.pid not in {s.pid for s in signals}

    blender.terminate()
    blender.wait(5)
    clock.advance(1.0)
    assert apps.active() == ()


def test_the_executables_basename_matches_when_the_process_name_differs(spawn, clock, tmp_path: Path) -> None:
    script = tmp_path / "render-job"
    script.write_text("sleep 60\n")
    # name "sh", executable /usr/bin/dash; its own process group, so its `sleep` child ends with it
    proc = subprocess.Popen(["/bin/sh", str(script)], start_new_session=True)
    try:
        apps = ExclusiveApps(ProcessScanner(interval_s=1.0, clock=clock), ["DASH"])
        assert proc.pid in {s.pid for s in apps.active()}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)


def test_an_empty_list_never_scans_and_set_names_takes_effect_at_once(spawn, clock) -> None:
    scans: list[int] = []

    def counting_read(names: frozenset[str]) -> list[ProcessInfo]:
        scans.append(1)
        return read_process_table(names)

    blender = spawn("blender")
    apps = ExclusiveApps(ProcessScanner(interval_s=1.0, clock=clock, read=counting_read), [])
    assert apps.active() == ()
    assert scans == []
    apps.set_names(["blender.exe"])
    assert [s.pid for s in apps.active()] == [blender.pid]
    assert len(scans) == 1


@pytest.mark.parametrize(
    ("proc_name", "exe", "wanted", "entry"),
    [
        ("blender", "/opt/blender/blender", ["Blender"], "Blender"),
        ("resolve", "/opt/resolve/bin/resolve", ["DaVinci Resolve"], None),
        ("Cyberpunk2077.exe", None, ["cyberpunk2077"], "cyberpunk2077"),
        ("wine64-preloader", "/games/Photoshop.exe", ["photoshop.exe"], "photoshop.exe"),
        ("blender-softwaregl", "/opt/blender/blender-softwaregl", ["blender"], None),
    ],
)
def test_matching_is_by_name_or_exe_basename_case_insensitive_with_or_without_exe(
    proc_name: str, exe: str | None, wanted: list[str], entry: str | None
) -> None:
    proc = ProcessInfo(pid=1, ppid=0, name=proc_name, exe=exe, create_time=0.0)
    assert matching_entry(proc, {normalize_app_name(w): w for w in wanted}) == entry


# --- the shared scanner ----------------------------------------------------------------------------


def test_the_direct_proc_walk_sees_what_psutil_sees(spawn) -> None:
    long_named = spawn("davinci-resolve-studio")  # longer than the kernel's 15-character name
    reaper = spawn("reaper", "30")
    names = frozenset({"reaper"})
    direct = {p.pid: p for p in read_proc_directly(names)}
    portable = {p.pid: p for p in read_with_psutil(names)}
    common = direct.keys() & portable.keys()
    assert {long_named.pid, reaper.pid} <= common
    for pid in common:
        a, b = direct[pid], portable[pid]
        if a.exe is None and a.ppid == 2:
            continue  # kernel threads rename themselves (kworker/1:0-events -> ...-mm_percpu_wq) at will
        assert (a.name, a.ppid, a.exe, a.cmdline) == (b.name, b.ppid, b.exe, b.cmdline), pid
        assert a.create_time is not None and b.create_time is not None
        assert abs(a.create_time - b.create_time) < 0.05
    assert direct[long_named.pid].name == "davinci-resolve-studio"
    assert direct[reaper.pid].cmdline == (direct[reaper.pid].exe, "30")
    assert direct[long_named.pid].cmdline is None  # command lines only for the names asked for


@pytest.mark.parametrize("walk", [read_proc_directly, read_with_psutil])
def test_the_scanner_tolerates_processes_vanishing_while_it_walks(walk) -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["true"], check=False)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        for _ in range(15):
            table = walk(frozenset({"true", "reaper"}))
            assert any(p.pid == os.getpid() for p in table)
    finally:
        stop.set()
        churner.join(5)


def test_a_failing_walk_keeps_the_last_table_and_is_logged(clock, caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}
    known = [ProcessInfo(pid=42, ppid=1, name="blender", exe=None, create_time=1.0)]

    def flaky(names: frozenset[str]) -> list[ProcessInfo]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("/proc is gone")
        return known

    scanner = ProcessScanner(interval_s=1.0, clock=clock, read=flaky)
    assert scanner.table().processes == tuple(known)
    clock.advance(1.0)
    with caplog.at_level(logging.ERROR):
        table = scanner.table()
    assert table.processes == tuple(known) and table.generation == 2
    assert "reading the process table failed" in caplog.text


def test_a_negative_interval_is_refused_naming_the_setting(clock) -> None:
    with pytest.raises(ValueError, match="process_check_interval_secs"):
        ProcessScanner(interval_s=-1, clock=clock)


# --- merging sources (CompositeSignals) ------------------------------------------------------------


class _Fixed:
    def __init__(self, *signals: GameSignal) -> None:
        self.signals = signals
        self.closed = False

    def active(self) -> tuple[GameSignal, ...]:
        return self.signals

    def close(self) -> None:
        self.closed = True


class _Broken:
    def active(self) -> tuple[GameSignal, ...]:
        raise RuntimeError("watcher fell over")

    def close(self) -> None:
        raise RuntimeError("and cannot close")


def test_the_same_pid_from_two_sources_is_one_signal_with_the_best_name_and_the_first_source() -> None:
    steam = GameSignal(name="Steam game 1091500", source="steam", pid=7, app_id="1091500", started_at=1.0)
    gamemode = GameSignal(name="Cyberpunk2077.exe", source="gamemode", pid=7, exe="/g/x.exe", started_at=2.0)
    other = GameSignal(name="blender", source="exclusive_app", pid=8, started_at=3.0)
    (game, blender) = merge([steam, gamemode, other])
    assert (game.name, game.source, game.pid, game.app_id, game.exe) == (
        "Cyberpunk2077.exe",
        "steam",
        7,
        "1091500",
        "/g/x.exe",
    )
    assert game.started_at == 1.0
    assert blender == other
    titled = GameSignal(name="Cyberpunk 2077", source="steam", pid=7, app_id="1091500", started_at=1.0)
    assert merge([gamemode, titled])[0].name == "Cyberpunk 2077"


def test_composite_signals_survive_a_broken_source_and_close_all(caplog: pytest.LogCaptureFixture) -> None:
    good = _Fixed(GameSignal(name="blender", source="exclusive_app", pid=8, started_at=3.0))
    composite = CompositeSignals([_Broken(), good])
    with caplog.at_level(logging.ERROR):
        assert [s.pid for s in composite.active()] == [8]
        assert [s.pid for s in composite.active()] == [8]
    failures = [r for r in caplog.records if "failed; ignoring it" in r.getMessage()]
    assert len(failures) == 1  # logged once, not every tick
    composite.close()
    assert good.closed
