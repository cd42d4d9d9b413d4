"""The engine's worker thread: signals, their order and payloads on the game-launch scenario; commands;
settings; a failing tick; the ordered shutdown."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from app.core import events as ev
from app.core.holders import ModelState
from app.ui.worker import StewardWorker
from tests.fixtures.ui_engine import SteppedSteward

MODEL = "llama-3.1-8b-instruct-q8_0"


def kind_is(kind: str, **facts: Any) -> Any:
    def check(event: ev.Event) -> bool:
        return event.kind == kind and all(getattr(event, k) == v for k, v in facts.items())

    return check


def snapshot_is(state: str, *, tick: int | None = None, model_state: ModelState | None = None) -> Any:
    def check(snapshot: Any) -> bool:
        if snapshot.state != state or (tick is not None and snapshot.tick != tick):
            return False
        return model_state is None or snapshot.models[0].state == model_state

    return check


@pytest.fixture
def worker(qtbot: Any, stepped: SteppedSteward) -> Any:
    w = StewardWorker(stepped)
    yield w
    w.stop_and_wait(timeout_s=5)


def start_until_resident(qtbot: Any, worker: StewardWorker, stepped: SteppedSteward) -> None:
    """Scenario seconds 1-3: the model loads (progress, then resident)."""
    stepped.poll_s = 0.02
    with qtbot.waitSignals(
        [worker.snapshot, worker.engine_event, worker.snapshot, worker.engine_event, worker.snapshot],
        order="strict",
        timeout=5000,
        check_params_cbs=[
            snapshot_is("idle", tick=1, model_state=ModelState.LOADING),
            kind_is("LoadProgress", model=MODEL, total_bytes=8 * 2**30),
            snapshot_is("active", tick=2, model_state=ModelState.LOADING),
            kind_is("VramAllocated", model=MODEL, gpu=0, bytes=8 * 2**30),
            snapshot_is("active", tick=3, model_state=ModelState.RESIDENT),
        ],
    ):
        worker.start_in_thread()
    stepped.poll_s = 3600.0


def test_startup_load_then_game_evicts_in_order(
    qtbot: Any, worker: StewardWorker, stepped: SteppedSteward
) -> None:
    start_until_resident(qtbot, worker, stepped)
    stepped.poll_s = 0.01  # run on to scenario second 20, when GameMode registers the game
    seen: list[ev.Event] = []
    worker.engine_event.connect(seen.append)
    with qtbot.waitSignals(
        [worker.engine_event, worker.engine_event, worker.engine_event],
        order="strict",
        timeout=10000,
        check_params_cbs=[
            kind_is("GameStarted", name="Cyberpunk 2077", source="gamemode", pid=4242),
            kind_is("VramDeallocated", model=MODEL, reason="game"),
            kind_is("ModelsEvicted", gpu=0, models=(MODEL,), reason="game", trigger="Cyberpunk 2077"),
        ],
    ):
        pass
    evicted = next(e for e in seen if isinstance(e, ev.ModelsEvicted))
    assert evicted.freed_bytes == 8 * 2**30
    with qtbot.waitSignal(worker.snapshot, timeout=10000) as after:
        pass
    assert after.args[0].state == "evicted_for_game"
    assert stepped.steward.backend.our_bytes(0) == 0


def test_commands_cross_to_the_engine_and_come_back_as_events(
    qtbot: Any, worker: StewardWorker, stepped: SteppedSteward
) -> None:
    start_until_resident(qtbot, worker, stepped)
    with qtbot.waitSignals(
        [worker.engine_event, worker.engine_event, worker.engine_event, worker.snapshot],
        order="strict",
        timeout=10000,
        check_params_cbs=[
            kind_is("Paused", by="user"),  # the user's own command leaves a trace in the Events tab
            kind_is("VramDeallocated", model=MODEL, reason="pause"),
            kind_is("ModelsEvicted", reason="pause", models=(MODEL,)),
            lambda s: s.state == "paused" and s.paused and s.models[0].state == ModelState.EVICTED,
        ],
    ):
        worker.submit("pause")
    with qtbot.waitSignals(
        [worker.engine_event, worker.engine_event, worker.snapshot],
        order="strict",
        timeout=10000,
        check_params_cbs=[
            kind_is("Unpaused", by="user"),
            kind_is("Resumed", gpu=0, models=(MODEL,)),
            lambda s: not s.paused and s.models[0].state == ModelState.LOADING,
        ],
    ):
        worker.submit("resume")


def test_unknown_model_load_reports_an_error(
    qtbot: Any, worker: StewardWorker, stepped: SteppedSteward
) -> None:
    start_until_resident(qtbot, worker, stepped)
    with qtbot.waitSignal(worker.error, timeout=10000) as blocker:
        worker.submit("load", model="no-such-model")
    assert "no-such-model" in blocker.args[0]
    assert blocker.args[0].startswith("Could not load")


def test_settings_reach_the_engine_on_its_thread(
    qtbot: Any, worker: StewardWorker, stepped: SteppedSteward
) -> None:
    start_until_resident(qtbot, worker, stepped)
    seen: list[str] = []
    real_update = stepped.steward.update_settings

    def update(settings: Any) -> None:
        seen.append(threading.current_thread().name)
        real_update(settings)

    stepped.steward.update_settings = update
    new = dataclasses.replace(stepped.steward.settings, auto_pause_for_gaming=False)
    with qtbot.waitSignal(worker.snapshot, timeout=10000):
        worker.apply_settings(new)
    assert stepped.steward.settings.auto_pause_for_gaming is False
    assert seen and seen[0] != threading.main_thread().name


def fail_once(steward: Any) -> None:
    """A tick that raises once (a bug in the engine), then the real engine again."""
    real_step = steward.step
    failures = [1]

    def step() -> Any:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("holder exploded")
        return real_step()

    steward.step = step


def test_a_failing_tick_becomes_an_event_and_the_worker_goes_on(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any
) -> None:
    fail_once(sim_runtime.steward)
    engine = SteppedSteward(sim_runtime.steward, scenario_clock, poll_s=0.02)
    worker = StewardWorker(engine)
    try:
        with qtbot.waitSignals(
            [worker.engine_event, worker.snapshot],
            order="strict",
            timeout=5000,
            check_params_cbs=[
                lambda e: isinstance(e, ev.EngineError) and "holder exploded" in e.message,
                lambda s: s.tick == 1,
            ],
        ):
            worker.start_in_thread()
    finally:
        worker.stop_and_wait(timeout_s=5)


def test_ordered_shutdown_releases_vram_then_stops_services(
    qtbot: Any, sim_runtime: Any, scenario_clock: Any
) -> None:
    order: list[str] = []
    stepped = SteppedSteward(sim_runtime.steward, scenario_clock, poll_s=0.02)
    backend = sim_runtime.steward.backend
    real_shutdown = sim_runtime.steward.shutdown

    def shutdown() -> None:
        order.append(f"engine (held {backend.our_bytes(0)} bytes)")
        real_shutdown()

    sim_runtime.steward.shutdown = shutdown  # the loop's own ordered shutdown calls it
    worker = StewardWorker(
        stepped, stop_services=lambda: order.append(f"services (held {backend.our_bytes(0)})")
    )
    with qtbot.waitSignal(worker.engine_event, timeout=5000, check_params_cb=kind_is("VramAllocated")):
        thread = worker.start_in_thread()
    with qtbot.waitSignal(worker.stopped, timeout=5000):
        assert worker.stop_and_wait(timeout_s=5)
    assert order == [f"engine (held {8 * 2**30} bytes)", "services (held 0)"]
    assert thread.isFinished()
    ticks = worker.ticks
    qtbot.wait(100)
    assert worker.ticks == ticks  # the loop has ended


def test_plain_functions_connected_to_the_signals_run_on_the_gui_thread(
    qtbot: Any, worker: StewardWorker, stepped: SteppedSteward
) -> None:
    """What a notifier relies on: it subscribes a plain callable and is called on the GUI thread."""
    threads: set[str] = set()
    worker.engine_event.connect(lambda _e: threads.add(threading.current_thread().name))
    worker.snapshot.connect(lambda _s: threads.add(threading.current_thread().name))
    start_until_resident(qtbot, worker, stepped)
    assert threads == {threading.main_thread().name}
