"""The presentation rules, pure: snapshot -> labels, icon, colours and patterns, tooltip, menu state."""

from __future__ import annotations

import dataclasses

import pytest

from app.core.config import Settings
from app.core.gpu.snapshot import BackendState, GpuState
from app.core.holders import ModelState
from app.core.resources import STATE_ICONS, state_icon_file
from app.core.units import GiB, MiB
from app.ui import presenter
from app.ui.presenter import NOTICE_SHORT_CHARS, Notice, as_notice, present, process_rows
from tests.fixtures import ui_snapshots as snaps

SETTINGS = Settings()
ALL_ICONS = set(STATE_ICONS)


def test_gpu_status_line_and_tooltip_say_used_total_ours_and_free() -> None:
    view = present(snaps.snapshot("active"), SETTINGS)
    (gpu,) = view.gpus
    # 3 GiB ours + 0.5 GiB desktop + 2 GiB game = 5.5 GiB of 12; the driver reserves 256 MiB, so NVML says
    # 12 GiB - 256 MiB - 5.5 GiB = 6.25 GiB free, and so does the tooltip (not 6.5: reserved is not free)
    assert gpu.status_line == "GPU 0: 5.5 GiB / 12.0 GiB used, 3.0 GiB ours"
    assert gpu.tooltip_line == "GPU 0: 5.5 GiB / 12.0 GiB used, 6.2 GiB free"
    assert gpu.free_bytes == 12 * GiB - 256 * MiB - 5632 * MiB
    assert view.tooltip.splitlines() == ["VRAM Steward: Models resident", gpu.tooltip_line]


def test_gauge_segments_split_used_vram_by_role_and_add_up_to_total() -> None:
    (gpu,) = present(snaps.snapshot(), SETTINGS).gpus
    sizes = {s.key: s.bytes for s in gpu.segments}
    assert sizes == {
        "ours": 3 * GiB,
        "desktop": 512 * MiB,
        "games_other": 2 * GiB,
        "reserved": 256 * MiB,  # the driver's: neither used nor free
        "free": 12 * GiB - 256 * MiB - 5632 * MiB,  # exactly NVML's free_bytes
    }
    assert sizes["free"] == gpu.free_bytes
    assert sum(sizes.values()) == gpu.total_bytes
    # every segment is told apart by pattern and label too, not by colour alone
    assert len({s.pattern for s in gpu.segments}) == 5
    assert [s.label for s in gpu.segments] == [
        "ours",
        "desktop",
        "games + other apps",
        "reserved by the driver",
        "free",
    ]
    assert gpu.headroom_bytes == max(2 * GiB, int(12 * GiB * 0.10))


def test_unattributed_vram_counts_as_other_apps() -> None:
    g = snaps.gpu(ours=0, desktop=0, game=0)
    g = type(g)(**{**{f: getattr(g, f) for f in g.__slots__}, "used_bytes": 1 * GiB, "free_bytes": 11 * GiB})
    (view,) = present(snaps.snapshot("idle", gpus=(g,), models=()), SETTINGS).gpus
    assert {s.key: s.bytes for s in view.segments}["games_other"] == 1 * GiB


@pytest.mark.parametrize(
    ("state", "icon", "title", "pause_text"),
    [
        ("idle", "idle", "Idle: no models loaded", "Pause"),
        ("active", "resident", "Models resident", "Pause"),
        ("evicted_for_game", "evicted-for-game", "Models freed for a game", "Pause"),
        ("evicted_for_pressure", "evicted-for-game", "Models freed: another app needs VRAM", "Pause"),
        ("cooldown", "evicted-for-game", "Waiting for the GPU to stay free", "Pause"),
        ("paused", "paused", "Paused", "Resume"),
        ("dedicated_blocked", "paused", "Waiting: other compute apps use the GPU", "Pause"),
        ("thermal", "paused", "Paused: GPU too hot", "Pause"),
        ("no_gpu", "no-gpu", "No NVIDIA GPU", "Pause"),
        ("error", "error", "Error: GPU monitoring failed", "Pause"),
    ],
)
def test_each_engine_state_has_its_icon_words_and_pause_entry(
    state: str, icon: str, title: str, pause_text: str
) -> None:
    view = present(snaps.snapshot(state), SETTINGS)
    assert (view.icon, view.title, view.pause_text) == (icon, title, pause_text)
    assert view.pause_command == pause_text.lower()
    assert view.icon in ALL_ICONS
    assert view.tooltip.startswith(f"VRAM Steward: {title}")


def test_every_engine_state_is_known_to_the_presenter() -> None:
    from app.core.policy.actions import EngineState

    assert {str(s) for s in EngineState} <= set(presenter.STATES)


def test_every_icon_the_presenter_names_is_shipped() -> None:
    for info in presenter.STATES.values():
        assert info.icon in STATE_ICONS
        assert state_icon_file(info.icon) is not None, info.icon


def test_active_with_nothing_resident_shows_the_idle_icon() -> None:
    view = present(snaps.snapshot("active", models=(snaps.model(ModelState.UNLOADED),)), SETTINGS)
    assert view.icon == "idle"
    assert view.evict_enabled is False


def test_paused_flag_offers_resume_even_in_another_state() -> None:
    view = present(snaps.snapshot("evicted_for_game", paused=True), SETTINGS)
    assert (view.pause_text, view.pause_command) == ("Resume", "resume")


def test_model_entries_toggle_between_load_and_unload() -> None:
    models = (
        snaps.model(ModelState.RESIDENT, name="a"),
        snaps.model(ModelState.EVICTED, name="b"),
        snaps.model(ModelState.LOADING, name="c", progress_done_bytes=1 * GiB, progress_total_bytes=4 * GiB),
        snaps.model(ModelState.FAILED, name="d"),
    )
    view = present(snaps.snapshot("active", models=models), SETTINGS)
    got = {m.name: (m.menu_text, m.command, m.checked) for m in view.models}
    assert got == {
        "a": ("a: resident (3.0 GiB)", "unload", True),
        "b": ("b: evicted (3.0 GiB)", "load", False),
        "c": ("c: loading 25 % (3.0 GiB)", "unload", True),
        "d": ("d: failed (3.0 GiB)", "load", False),
    }
    assert view.models[2].progress_percent == 25
    assert view.models[0].progress_percent is None
    assert view.models[0].digest_short == "9f86d081884c"
    assert view.models[0].load_text == "0.8 s at 3.7 GiB/s"  # 4.0e9 bytes/s
    assert view.evict_enabled is True


def test_toggles_mirror_the_settings() -> None:
    settings = Settings(auto_evict=False, auto_pause_for_gaming=True)
    view = present(snaps.snapshot(), settings)
    assert (view.auto_evict, view.auto_pause_for_gaming) == (False, True)


def test_backend_problem_and_app_notices_reach_the_tooltip() -> None:
    snap = snaps.snapshot(
        "no_gpu", gpus=(), models=(), backend_state=BackendState.NO_DRIVER, message="NVIDIA driver not found"
    )
    long = "No NVIDIA GPU found: running a simulation (scenario game-launch). NVML Shared Library Not Found"
    view = present(snap, SETTINGS, notices=[Notice("Simulation: no NVIDIA GPU", long)])
    assert view.notes == ("Simulation: no NVIDIA GPU", "GPU monitoring problem")  # one short line each
    assert view.tooltip.splitlines() == [
        "VRAM Steward: No NVIDIA GPU",
        "Simulation: no NVIDIA GPU",
        "GPU monitoring problem",
    ]
    # the whole story is for the dashboard
    assert view.notice_short == "Simulation: no NVIDIA GPU · GPU monitoring problem"
    assert view.notice_detail == f"{long}\n\nNVIDIA driver not found"


def test_a_plain_text_notice_gets_a_short_line_that_fits_the_menu() -> None:
    text = "The local API cannot start: the port 127.0.0.1:8765 is already in use by another program. More."
    notice = as_notice(text)
    assert notice.detail == text and len(notice.short) <= NOTICE_SHORT_CHARS
    assert notice.short.startswith("The local API cannot start")


def test_the_countdown_before_models_come_back_and_reload_now() -> None:
    out = snaps.model(state=ModelState.EVICTED)
    snap = dataclasses.replace(snaps.snapshot("cooldown", models=(out,)), resume_at=None)
    snap = dataclasses.replace(snap, resume_at=snap.telemetry.taken_at + 22.4)
    view = present(snap, SETTINGS)
    assert view.wait_text == "Models come back in 23 s" and view.resume_in_s == pytest.approx(22.4)
    assert view.tooltip.splitlines()[1] == "Models come back in 23 s"
    assert view.reload_enabled
    paused = dataclasses.replace(snap, paused=True, state="paused", resume_at=None)
    assert present(paused, SETTINGS).wait_text == "" and not present(paused, SETTINGS).reload_enabled


def test_a_lost_gpu_says_so_instead_of_numbers() -> None:
    g = snaps.gpu()
    lost = type(g)(
        **{**{f: getattr(g, f) for f in g.__slots__}, "state": GpuState.LOST, "message": "fell off the bus"}
    )
    (view,) = present(snaps.snapshot("error", gpus=(lost,)), SETTINGS).gpus
    assert view.problem == "fell off the bus"
    assert view.status_line == "GPU 0: fell off the bus"


def test_process_rows_largest_first_with_roles() -> None:
    rows = process_rows(snaps.snapshot())
    assert [(r.name, r.role, r.vram_text) for r in rows] == [
        ("vram-steward-host", "self", "3.0 GiB"),
        ("Cyberpunk2077.exe", "game", "2.0 GiB"),
        ("Xorg", "desktop", "512.0 MiB"),
    ]


def test_starting_view_before_the_first_snapshot() -> None:
    view = presenter.starting_view(SETTINGS, notices=["Simulation"])
    assert view.title == "Starting"
    assert view.evict_enabled is False
    assert view.tooltip == "VRAM Steward: Starting\nSimulation"


def test_a_games_row_shows_what_it_needed_last_time() -> None:
    import dataclasses

    from app.core.engine.game_peaks import LearnedGame
    from app.core.policy.signals import GameSignal
    from app.ui.presenter import process_rows
    from tests.fixtures.ui_snapshots import snapshot

    snap = snapshot()
    (game_row,) = [r for r in process_rows(snap) if r.role == "game"]
    signal = GameSignal(
        name="Cyberpunk 2077", source="steam", pid=game_row.pid, app_id="1091500", started_at=0
    )
    learned = (LearnedGame("steam:1091500", "Cyberpunk 2077", 10 * 2**30, 3, 0.0),)
    snap = dataclasses.replace(snap, games=(signal,), learned_games=learned)
    rows = process_rows(snap)
    assert [r.learned_text for r in rows if r.pid == game_row.pid] == ["needed 10.0 GiB last time"]
    assert all(r.learned_text == "" for r in rows if r.pid != game_row.pid)


def test_a_frozen_app_says_what_sits_in_host_ram() -> None:
    from app.core.config import Settings
    from app.core.holders import ModelState, ModelStatus
    from app.ui.presenter import present
    from tests.fixtures.ui_snapshots import snapshot

    frozen = ModelStatus(
        name="ComfyUI",
        gpu=0,
        size_bytes=12 * 2**30,
        state=ModelState.FROZEN,
        holder="freeze",
        held_by_user=True,
    )
    view = present(snapshot(models=(frozen,)), Settings())
    assert "ComfyUI: 12.0 GiB of GPU 0 frozen in host RAM" in view.tooltip
    (row,) = view.models
    assert row.menu_text == "ComfyUI: frozen in RAM until you thaw it (12.0 GiB)" and row.command == "load"
