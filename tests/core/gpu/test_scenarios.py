"""Every shipped scenario replayed through SimulatedBackend at chosen times, and bad scenario files."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import ConfigError, VramError
from app.core.events import GameEnded, GameStarted, GpuLost
from app.core.gpu.scenario import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    shipped_scenario_names,
    shipped_scenarios_dir,
)
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.gpu.snapshot import BackendState, GpuSnapshot, GpuState, ProcessKind
from app.core.units import GiB, MiB

SHIPPED = [
    "browser-growth",
    "dedicated-server",
    "desktop-idle",
    "exclusive-app",
    "flapping-process",
    "game-launch",
    "gpu-lost",
    "steam-game",
]
DESKTOP = {1201: 180 * MiB, 1650: 120 * MiB, 2310: 300 * MiB}  # Xorg, gnome-shell, firefox
RTX3060_USABLE = 12 * GiB - 256 * MiB


def at(name: str, t: float) -> tuple[SimulatedBackend, GpuSnapshot]:
    backend = SimulatedBackend.from_file(name, clock=ManualClock(t))
    snapshot = backend.sample()
    gpu = snapshot.gpu(0)
    assert gpu is not None
    return backend, gpu


def used_by_pid(gpu: GpuSnapshot) -> dict[int, int | None]:
    return {p.pid: p.used_bytes for p in gpu.processes}


def test_all_shipped_scenarios_are_present_and_parse() -> None:
    assert shipped_scenario_names() == SHIPPED
    for name in SHIPPED:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert scenario.description
        text = (shipped_scenarios_dir() / f"{name}.toml").read_text()
        assert text.startswith(f"# {name}:"), f"{name}.toml must start with a comment saying what it shows"


def test_resources_scenarios_points_to_the_package() -> None:
    readme = Path(__file__).resolve().parents[3] / "resources" / "scenarios" / "README.md"
    assert "app/data/scenarios" in readme.read_text()


@pytest.mark.parametrize("t", [0.0, 300.0, 600.0])
def test_desktop_idle_never_changes(t: float) -> None:
    backend, gpu = at("desktop-idle", t)
    assert used_by_pid(gpu) == DESKTOP
    assert gpu.used_bytes == 600 * MiB
    assert gpu.free_bytes == RTX3060_USABLE - 600 * MiB == 11432 * MiB
    assert gpu.reserved_bytes == 256 * MiB
    assert gpu.temperature_c == 41
    assert backend.active_game_signals() == ()
    assert backend.sample().state == BackendState.SIMULATED
    assert backend.scenario.duration_s == 600


def test_game_launch_follows_the_s2_story() -> None:
    backend = SimulatedBackend.from_file("game-launch", clock=ManualClock())
    free = {t: backend.sample_at(t).gpus[0].free_bytes for t in (0, 21.9, 22, 26, 30, 60, 119.9, 120)}
    assert free[0] == free[21.9] == 11432 * MiB
    assert free[22] == 11432 * MiB - 300 * MiB
    # linear ramp 300 MiB -> 10240 MiB over 22..30 s: at 26 s half way, 5270 MiB
    assert used_by_pid(backend.sample_at(26).gpus[0])[4242] == 5270 * MiB
    assert free[26] == 11432 * MiB - 5270 * MiB
    assert free[30] == free[60] == free[119.9] == 1192 * MiB
    assert free[120] == 11432 * MiB
    assert 4242 not in used_by_pid(backend.sample_at(21.9).gpus[0])
    game = backend.sample_at(30).gpus[0].process(4242)
    assert game is not None and game.name == "Cyberpunk2077.exe" and game.kind == ProcessKind.GRAPHICS
    assert game.used_bytes == 10 * GiB
    assert backend.failed_allocations == []  # nothing of ours on the GPU: the game fits


def test_game_launch_signal_window_and_sensors() -> None:
    backend = SimulatedBackend.from_file("game-launch", clock=ManualClock())
    assert backend.active_game_signals(19.9) == ()
    assert backend.sample_at(19.9).game_signals == ()
    for t in (20.0, 60.0, 120.5):
        (signal,) = backend.active_game_signals(t)
        assert (signal.name, signal.source, signal.pid, signal.app_id) == (
            "Cyberpunk 2077",
            "gamemode",
            4242,
            None,
        )
        assert signal.started_at_s == signal.started_at == 20.0
        assert backend.sample_at(t).game_signals == ("Cyberpunk 2077",)
    assert backend.active_game_signals(121.0) == ()
    assert backend.sample_at(24.9).gpus[0].temperature_c == 43
    assert backend.sample_at(25).gpus[0].temperature_c == 71
    assert backend.sample_at(25).gpus[0].utilization_percent == 98
    assert backend.sample_at(130).gpus[0].temperature_c == 52
    events = backend.scenario_events(until_s=200)
    assert [type(e) for e in events] == [GameStarted, GameEnded]
    assert events[0].at == 20.0 and events[1].at == 121.0
    assert isinstance(events[1], GameEnded) and events[1].pid == 4242 and events[1].source == "gamemode"
    assert backend.scenario_events(until_s=19) == ()
    (model,) = backend.scenario.models
    assert (model.name, model.gpu, model.size_bytes) == ("llama-3.1-8b-instruct-q8_0", 0, 8 * GiB)


def test_dedicated_server_has_no_desktop_and_a_foreign_job() -> None:
    usable = 141 * GiB - 512 * MiB
    _, gpu = at("dedicated-server", 0)
    assert gpu.processes == () and gpu.free_bytes == usable and gpu.name == "NVIDIA H200"
    _, gpu = at("dedicated-server", 65)
    assert used_by_pid(gpu) == {7001: 20 * GiB}
    assert gpu.processes[0].kind == ProcessKind.COMPUTE
    _, gpu = at("dedicated-server", 70)
    assert gpu.free_bytes == usable - 40 * GiB
    _, gpu = at("dedicated-server", 300)
    assert gpu.processes == () and gpu.temperature_c == 58  # cools down at 301 s
    _, gpu = at("dedicated-server", 301)
    assert gpu.temperature_c == 36


@pytest.mark.parametrize(
    ("t", "present"),
    [
        (9.99, False),
        (10.0, True),
        (10.49, True),
        (10.5, False),
        (11.2, True),
        (609.2, True),
        (609.5, False),
        (615, False),
    ],
)
def test_flapping_process_holds_two_gib_half_of_each_second(t: float, present: bool) -> None:
    backend, gpu = at("flapping-process", t)
    assert (5100 in used_by_pid(gpu)) is present
    assert gpu.free_bytes == RTX3060_USABLE - 300 * MiB - (2 * GiB if present else 0)
    starts = [e for e in backend.scenario.timeline if e.event == "process_start"]
    assert len(starts) == 600 and starts[-1].at_s == 609.0


def test_gpu_lost_at_fifteen_seconds() -> None:
    backend = SimulatedBackend.from_file("gpu-lost", clock=ManualClock())
    before = backend.sample_at(14.9)
    assert [g.state for g in before.gpus] == [GpuState.OK, GpuState.OK]
    assert used_by_pid(before.gpus[1]) == {8800: 1 * GiB}
    after = backend.sample_at(15)
    gpu0, gpu1 = after.gpus
    assert gpu0.state == GpuState.OK and used_by_pid(gpu0) == {1201: 210 * MiB}
    assert gpu1.state == GpuState.LOST
    assert gpu1.message is not None and "fell off the bus" in gpu1.message
    assert (
        gpu1.processes == () and gpu1.temperature_c is None and gpu1.reason("temperature_c") == "GPU is lost"
    )
    assert backend.sample_at(60).gpus[1].state == GpuState.LOST  # stays lost
    (lost,) = backend.scenario_events(until_s=60)
    assert isinstance(lost, GpuLost) and lost.gpu == 1 and lost.at == 15.0


@pytest.mark.parametrize(("t", "firefox_mib"), [(0, 300), (30, 300), (60, 450), (90, 600), (120, 600)])
def test_browser_growth_ramps_by_300_mib(t: float, firefox_mib: int) -> None:
    _, gpu = at("browser-growth", t)
    assert used_by_pid(gpu)[2310] == firefox_mib * MiB
    assert gpu.free_bytes == RTX3060_USABLE - (300 + firefox_mib) * MiB


def test_steam_game_signal_has_the_app_id() -> None:
    backend = SimulatedBackend.from_file("steam-game", clock=ManualClock(9.9))
    assert backend.active_game_signals() == ()
    backend.set_clock(ManualClock(17.0))
    (signal,) = backend.active_game_signals()
    assert (signal.name, signal.source, signal.pid, signal.app_id) == (
        "Baldur's Gate 3",
        "steam",
        6100,
        "1086940",
    )
    gpu = backend.sample().gpus[0]
    assert used_by_pid(gpu)[6120] == 3684 * MiB  # 200 MiB -> 7168 MiB over 12..22 s, half way
    assert used_by_pid(backend.sample_at(22).gpus[0])[6120] == 7 * GiB
    assert 6120 not in used_by_pid(backend.sample_at(200).gpus[0])
    assert backend.active_game_signals(200.5) != () and backend.active_game_signals(201) == ()


# --- bad scenario files ------------------------------------------------------------------------------

GPU = '[[gpus]]\nindex = 0\nname = "Test GPU"\ntotal = "12 GiB"\n'


@pytest.mark.parametrize(
    ("text", "key", "shown", "expected"),
    [
        ("", "gpus", "(missing)", "at least one [[gpus]] table"),
        (
            '[[gpus]]\nindex = 0\nname = "X"\ntotal = "12 GB!"\n',
            "gpus[0].total",
            "'12 GB!'",
            "a size such as",
        ),
        ('[[gpus]]\nindex = 0\nname = "X"\ntottal = "12 GiB"\n', "gpus[0].total", "(missing)", "required"),
        (GPU + "tottal = 3\n", "gpus[0].tottal", "3", "one of the keys"),
        (GPU + 'reserved = "13 GiB"\n', "gpus[0].reserved", "'13 GiB'", "below the GPU's total"),
        (GPU + GPU, "gpus[1].index", "0", "not used by another GPU"),
        (
            GPU + '[[processes]]\npid = 5\nname = "x"\nused = "1 GiB"\ngpu = 3\n',
            "processes[0].gpu",
            "3",
            "[[gpus]] (0)",
        ),
        (
            GPU + '[[processes]]\npid = 5\nname = "x"\nused = "1 GiB"\nkind = "cuda"\n',
            "processes[0].kind",
            "'cuda'",
            "compute, graphics, both",
        ),
        (
            GPU
            + '[[processes]]\npid = 5\nname = "a"\nused = 1\n[[processes]]\npid = 5\nname = "b"\nused = 1\n',
            "processes[1].pid",
            "5",
            "not used by another process",
        ),
        (
            GPU + '[[timeline]]\nat = 1\nevent = "explode"\n',
            "timeline[0].event",
            "'explode'",
            "one of process_start",
        ),
        (
            GPU + '[[timeline]]\nat = -1\nevent = "process_exit"\npid = 9\n',
            "timeline[0].at",
            "-1",
            "0 or more",
        ),
        (
            GPU + '[[timeline]]\nat = 4\nevent = "process_resize"\npid = 9\nto = "1 GiB"\n',
            "timeline[0].pid",
            "9",
            "running at 4 s",
        ),
        (
            GPU + '[[timeline]]\nat = 4\nevent = "game_signal_end"\nname = "G"\n',
            "timeline[0].name",
            "'G'",
            "active at 4 s",
        ),
        (
            GPU + '[[timeline]]\nat = 4\nevent = "game_signal_start"\nname = "G"\nsource = "origin"\n',
            "timeline[0].source",
            "'origin'",
            "gamemode, steam, exclusive_app",
        ),
        (
            GPU
            + '[[timeline]]\nat = 1\nevent = "process_exit"\npid = 9\nrepeat = { every_s = 1, count = 0 }\n',
            "timeline[0].repeat.count",
            "0",
            "1 or more",
        ),
        (
            GPU + '[[timeline]]\nat = 1\nevent = "gpu_recovered"\ngpu = 0\n',
            "timeline[0].gpu",
            "0",
            "lost at 1 s",
        ),
        (GPU + "duration_s = 3\n", "gpus[0].duration_s", "3", "one of the keys"),
        ("description = 'x'\n[[gpus]\n", "(syntax)", "(missing)", "valid TOML"),
    ],
)
def test_bad_scenarios_name_file_entry_key_value_expected(
    text: str, key: str, shown: str, expected: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, path="/tmp/bad.toml")
    error = info.value
    assert isinstance(error, ConfigError) and isinstance(error, VramError)
    assert error.code == "scenario_error"
    assert error.key == key
    assert error.message.startswith(f"/tmp/bad.toml: {key} = {shown}: expected ")
    assert expected in error.message
    assert "/tmp/bad.toml" in error.user_message() and key in error.user_message()


def test_a_later_entry_in_time_is_checked_in_time_order() -> None:
    # the exit is written first but happens after the start: valid
    text = GPU + (
        '[[timeline]]\nat = 9\nevent = "process_exit"\npid = 7\n'
        '[[timeline]]\nat = 2\nevent = "process_start"\npid = 7\nname = "x"\nused = "1 GiB"\n'
    )
    scenario = parse_scenario(text)
    assert [e.event for e in scenario.timeline] == ["process_start", "process_exit"]
    assert scenario.timeline[1].entry == "timeline[0]"


def test_unknown_scenario_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as info:
        SimulatedBackend.from_file("game-lunch")
    assert "game-launch" in info.value.message and "desktop-idle" in info.value.message
    with pytest.raises(ScenarioError):
        load_scenario(tmp_path / "missing.toml")


def test_a_scenario_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GPU + '[[processes]]\npid = 5\nname = "blender"\nused = "3 GiB"\nkind = "both"\n')
    backend = SimulatedBackend.from_file(path, clock=ManualClock())
    gpu = backend.sample().gpus[0]
    assert backend.scenario.name == "mine" and backend.scenario.path == str(path)
    assert gpu.uuid == "GPU-simulated-0000" and gpu.reserved_bytes == 0
    assert gpu.free_bytes == 9 * GiB and gpu.temperature_c is None
    assert gpu.reason("temperature_c") == "not given by the scenario"
    bad = tmp_path / "bad.toml"
    bad.write_text(GPU + 'temperature = "hot"\n')
    with pytest.raises(ScenarioError) as info:
        SimulatedBackend.from_file(bad)
    assert info.value.message == f"{bad}: gpus[0].temperature = 'hot': expected a whole number of 0 or more"
