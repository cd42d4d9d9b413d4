"""ProcessClassifier: roles, the learned baseline, per-app rules, foreign VRAM and the container fallback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence

from app.core.config import AppRule, Settings
from app.core.gpu.null import NullBackend
from app.core.gpu.simulated import ManualClock
from app.core.gpu.snapshot import GpuProcess, ProcessKind
from app.core.policy.classify import (
    NOT_VISIBLE_NOTE,
    Classification,
    ProcessClassifier,
    executable_name,
    match_app_rule,
)
from app.core.policy.roles import Role
from app.core.policy.signals import GameSignal
from app.core.units import GiB, MiB
from tests.fixtures.policy_world import desktop_processes, game, gpu_snapshot, proc, telemetry

OUR_PID = 4000
HOST_PID = 4001


def classifier(settings: Settings | None = None, parents: dict[int, int] | None = None) -> ProcessClassifier:
    table = parents or {}
    return ProcessClassifier(
        settings or Settings(),
        clock=ManualClock(1000.0),
        own_pid=OUR_PID,
        parent_pid=lambda pid: table.get(pid),
    )


def classify(
    c: ProcessClassifier,
    processes: Sequence[GpuProcess],
    *,
    games: Sequence[GameSignal] = (),
    expected: Mapping[int, int] | None = None,
    managed: Iterable[int] = (),
    total: int = 12 * GiB,
) -> Classification:
    snap = telemetry([gpu_snapshot(0, total, processes)])
    return c.classify(
        snap, self_pids={HOST_PID}, managed_pids=set(managed), games=list(games), our_expected_bytes=expected
    )


def test_roles_of_a_desktop_our_host_a_child_and_a_managed_server() -> None:
    c = classifier(parents={5000: OUR_PID, 5001: 1})
    processes = [
        *desktop_processes(),
        proc(HOST_PID, "python3", 4 * GiB, ProcessKind.COMPUTE),
        proc(5000, "python3", 2 * GiB, ProcessKind.COMPUTE),  # a child of ours
        proc(5001, "ollama_llama_server", 3 * GiB, ProcessKind.COMPUTE),
        proc(5002, "/usr/bin/blender", 1 * GiB),
    ]
    result = classify(c, processes, managed={5001})
    assert [result.role(0, p.pid) for p in processes] == [
        Role.DESKTOP,
        Role.DESKTOP,
        Role.DESKTOP,
        Role.SELF,
        Role.SELF,
        Role.MANAGED,
        Role.OTHER,
    ]
    # foreign = desktop + blender; ours and the managed server are not foreign
    assert result.foreign_bytes(0) == (220 + 180 + 350) * MiB + 1 * GiB
    assert result.baseline_bytes(0) == (220 + 180 + 350) * MiB
    assert result.growth(0) == 1 * GiB
    assert result.role(0, 99999) is None


def test_parent_pid_is_found_with_psutil_for_a_real_child_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        c = ProcessClassifier(Settings(), clock=ManualClock(1000.0))  # own pid and psutil: the real thing
        result = classify(
            c, [proc(child.pid, "python3", 1 * GiB, ProcessKind.COMPUTE), proc(2**22 + 7, "gone", 0)]
        )
        assert result.role(0, child.pid) == Role.SELF
        assert result.role(0, 2**22 + 7) == Role.DESKTOP  # no such process: tolerated, small, first sample
    finally:
        child.kill()
        child.wait()


def test_learned_baseline_is_what_was_small_and_present_at_the_first_sample() -> None:
    c = classifier()
    first = classify(c, [proc(200, "conky", 100 * MiB), proc(201, "render-farm", 600 * MiB)])
    assert first.role(0, 200) == Role.DESKTOP
    assert first.role(0, 201) == Role.OTHER  # over baseline_max_process_vram (512 MiB)
    assert c.baseline_pids(0) == frozenset({200})
    later = classify(c, [proc(200, "conky", 150 * MiB), proc(202, "newcomer", 50 * MiB)])
    assert later.role(0, 202) == Role.OTHER  # not there at the start
    assert later.baseline_bytes(0) == 100 * MiB  # conky is tolerated as first seen
    assert later.growth(0) == 50 * MiB + 50 * MiB


def test_a_baseline_process_named_by_a_game_leaves_the_baseline_for_good() -> None:
    c = classifier()
    classify(c, [proc(300, "SomeGame.exe", 200 * MiB)])
    assert c.baseline_pids(0) == frozenset({300})
    during = classify(c, [proc(300, "SomeGame.exe", 200 * MiB)], games=[game("Some Game", 300)])
    assert during.role(0, 300) == Role.GAME
    after = classify(c, [proc(300, "SomeGame.exe", 200 * MiB)])
    assert after.role(0, 300) == Role.OTHER
    assert after.growth(0) == 200 * MiB


def test_a_process_that_left_does_not_pass_its_baseline_to_a_reused_pid() -> None:
    c = classifier()
    classify(c, [proc(400, "helper", 100 * MiB)])
    classify(c, [])
    again = classify(c, [proc(400, "helper", 100 * MiB)])
    assert again.role(0, 400) == Role.OTHER


def test_game_by_pid_and_by_executable_name() -> None:
    c = classifier()
    classify(c, desktop_processes())
    signal = game(
        "Cyberpunk 2077", 700, exe="/games/Cyberpunk 2077/bin/x64/Cyberpunk2077.exe", source="steam"
    )
    result = classify(
        c,
        [proc(700, "Cyberpunk2077.exe", 3 * GiB), proc(701, "C:\\Games\\Cyberpunk2077.exe", 1 * GiB)],
        games=[signal],
    )
    assert result.role(0, 700) == Role.GAME
    assert result.role(0, 701) == Role.GAME  # same executable, another pid
    assert result.growth(0) == 4 * GiB


def test_known_desktop_names_are_desktop_even_when_they_appear_later() -> None:
    c = classifier()
    classify(c, [])
    result = classify(
        c,
        [
            proc(800, "/opt/google/chrome/chrome --type=gpu-process --enable-crash-reporter", 400 * MiB),
            proc(801, "steamwebhelper", 100 * MiB),
            proc(802, "Xwayland", 90 * MiB),
        ],
    )
    assert {result.role(0, p) for p in (800, 801, 802)} == {Role.DESKTOP}
    assert result.growth(0) == 0


def test_desktop_programs_never_count_as_growth_and_the_learned_baseline_has_its_own_sizes() -> None:
    c = classifier()
    classify(c, [proc(103, "firefox", 350 * MiB), proc(700, "conky", 100 * MiB)])
    grown = classify(c, [proc(103, "firefox", 350 * MiB + 2 * GiB), proc(700, "conky", 400 * MiB)])
    assert grown.role(0, 103) == Role.DESKTOP and grown.role(0, 700) == Role.DESKTOP
    # the browser is never a trigger by growth (README); the learned small process, against its own size
    assert grown.growth_bytes[(0, 103)] == 0
    assert grown.growth_bytes[(0, 700)] == 300 * MiB
    assert grown.growth(0) == 300 * MiB
    c2 = classifier()
    classify(c2, [])
    big = classify(c2, [proc(900, "chrome", 1 * GiB)])  # a browser first seen large: tolerated all the same
    assert big.growth(0) == 0


def test_per_app_ignore_rule_makes_a_process_desktop_and_never_growth() -> None:
    settings = Settings(app_rules=(AppRule(match="blender", action="ignore"),))
    c = classifier(settings)
    classify(c, [proc(1000, "/usr/bin/blender", 1 * GiB)])
    result = classify(c, [proc(1000, "/usr/bin/blender", 6 * GiB)])
    assert result.role(0, 1000) == Role.DESKTOP
    assert result.growth(0) == 0
    assert result.ignored_bytes(0) == 6 * GiB


def test_per_app_evict_rule_and_steam_app_id_rules() -> None:
    settings = Settings(
        app_rules=(
            AppRule(match="blender", action="evict"),
            AppRule(match="steam:1091500", action="ignore"),
        )
    )
    c = classifier(settings)
    classify(c, desktop_processes())
    steam_game = game("Cyberpunk 2077", 1200, app_id="1091500", source="steam")
    result = classify(
        c, [proc(1100, "blender", 100 * MiB), proc(1200, "Cyberpunk2077.exe", 5 * GiB)], games=[steam_game]
    )
    assert result.role(0, 1100) == Role.GAME
    assert result.role(0, 1200) == Role.DESKTOP  # the user said: never mind this game
    assert result.growth(0) == 100 * MiB


def test_match_app_rule_and_executable_name() -> None:
    rules = (AppRule("Blender.exe", "evict"), AppRule("steam:42", "ignore"))
    assert match_app_rule(rules, exe="/usr/bin/blender", app_id=None) == rules[0]
    assert match_app_rule(rules, exe="game", app_id="42") == rules[1]
    assert match_app_rule(rules, exe="game", app_id="43") is None
    assert executable_name("/usr/lib/xorg/Xorg") == "xorg"
    assert executable_name("C:\\Program Files\\App\\Thing.EXE") == "thing"
    assert executable_name("/opt/x/chrome --type=gpu-process") == "chrome"
    assert executable_name(None) == ""


def test_processes_without_a_vram_figure_count_as_zero_and_are_noted() -> None:
    c = classifier()
    classify(c, [])
    result = classify(c, [proc(1300, "mystery", None), proc(1301, "other", 1 * GiB)])
    assert result.foreign_bytes(0) == 1 * GiB
    assert any("mystery (pid 1300)" in note and "counted as 0" in note for note in result.notes)


def test_container_fallback_matches_our_allocation_by_size() -> None:
    c = classifier()
    classify(c, desktop_processes())
    # our host shows up under a host PID we do not know; 6 GiB of models plus a 400 MiB context
    processes = [
        *desktop_processes(),
        proc(777001, "python3", 6 * GiB + 400 * MiB, ProcessKind.COMPUTE),
        proc(777002, "blender", 2 * GiB, ProcessKind.COMPUTE),
    ]
    result = classify(c, processes, expected={0: 6 * GiB})
    assert result.role(0, 777001) == Role.SELF
    assert result.role(0, 777002) == Role.OTHER
    assert result.growth(0) == 2 * GiB
    assert any(NOT_VISIBLE_NOTE in note and "pid 777001" in note for note in result.notes)


def test_container_fallback_without_a_match_says_so_and_keeps_everything_foreign() -> None:
    c = classifier()
    classify(c, [])
    result = classify(c, [proc(777003, "python3", 9 * GiB, ProcessKind.COMPUTE)], expected={0: 6 * GiB})
    assert result.role(0, 777003) == Role.OTHER
    assert any(NOT_VISIBLE_NOTE in note and "no process uses about 6.0 GiB" in note for note in result.notes)


def test_no_fallback_when_our_host_is_visible_or_we_hold_nothing() -> None:
    c = classifier()
    classify(c, [])
    visible = classify(
        c,
        [proc(HOST_PID, "python3", 6 * GiB, ProcessKind.COMPUTE), proc(5, "tool-a", 6 * GiB)],
        expected={0: 6 * GiB},
    )
    assert visible.role(0, 5) == Role.OTHER
    assert visible.notes == ()
    holding_nothing = classify(c, [proc(6, "tool-b", 6 * GiB)], expected={0: 0})
    assert holding_nothing.role(0, 6) == Role.OTHER
    assert holding_nothing.notes == ()


def test_no_gpu_snapshot_classifies_nothing() -> None:
    c = classifier()
    result = c.classify(NullBackend().sample(), self_pids=set(), managed_pids=set(), games=[])
    assert result.roles == {}
    assert result.foreign_bytes(0) == 0
