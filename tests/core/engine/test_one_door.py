"""The engine's one door: every request is a command with a typed outcome, read by the caller (never recovered
from the event log); one event per fact; the sleep handshake is a command too."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from app.core import events as ev
from app.core.config import Settings
from app.core.engine.commands import LoadRefused, Outcome, PrepareForSleep
from app.core.gpu.simulated import ManualClock
from app.core.holders import VerifyUnsupported
from app.core.policy.contention import Command
from app.core.wiring import build_runtime

MODEL = "llama-3.1-8b-instruct-q8_0"  # game-launch: 8 GiB on a 12 GiB card, a game signal at 20 s


@pytest.fixture
def engine() -> Any:
    clock = ManualClock()
    runtime = build_runtime(Settings(), simulate="game-launch", clock=clock, with_api=False, audit=False)
    events: list[ev.Event] = []
    runtime.steward.subscribe(events.append)
    yield runtime.steward, clock, events
    runtime.stop()


def run_for(steward: Any, clock: ManualClock, seconds: float) -> Any:
    end = clock() + seconds
    snapshot = steward.tick()
    while clock() < end:
        clock.advance(0.1)
        snapshot = steward.tick()
    return snapshot


def test_a_refused_load_is_its_own_typed_outcome_and_one_event(engine: Any) -> None:
    steward, clock, events = engine
    run_for(steward, clock, 2.0)
    steward.submit(Command(kind="pause"))
    steward.tick()
    load = steward.submit(Command(kind="load", model=MODEL))
    steward.tick()
    with pytest.raises(LoadRefused) as refused:
        load.result(timeout=1)
    assert refused.value.code == "paused" and refused.value.http_status == 409
    assert refused.value.details == {"model": MODEL, "gpu": 0, "reason": "paused"}
    assert "resume" in " ".join(refused.value.suggestions).lower()
    assert len([e for e in events if isinstance(e, ev.LoadRefused)]) == 1


def test_pause_resume_and_show_leave_one_event_each_and_typed_outcomes(engine: Any) -> None:
    steward, clock, events = engine
    run_for(steward, clock, 2.0)
    outcomes = [steward.submit(Command(kind=k)) for k in ("pause", "show")]
    steward.tick()
    pause, show = (f.result(timeout=1) for f in outcomes)
    assert isinstance(pause, Outcome) and pause.command == "pause" and pause.state == "paused"
    assert show.command == "show"
    resume = steward.submit(Command(kind="resume"))
    steward.tick()
    assert resume.result(timeout=1).state != "paused"
    kinds = [e.kind for e in events if e.kind in ("Paused", "Unpaused", "ShowRequested")]
    assert kinds == ["Paused", "ShowRequested", "Unpaused"]


def test_the_sleep_handshake_completes_once_no_vram_is_held(engine: Any) -> None:
    steward, clock, _events = engine
    assert any(m.state == "resident" for m in run_for(steward, clock, 2.0).models)
    asleep = steward.submit(PrepareForSleep(True))
    steward.tick()
    outcome = asleep.result(timeout=1)
    assert outcome.command == "sleep" and outcome.state == "sleeping"
    assert steward.backend.our_bytes(0) == 0
    awake = steward.submit(PrepareForSleep(False))
    snapshot = run_for(steward, clock, 1.0)
    assert awake.result(timeout=1).command == "wake"
    assert snapshot.state != "sleeping"


def test_verify_where_a_holder_cannot_is_a_typed_refusal(engine: Any) -> None:
    steward, clock, _events = engine
    run_for(steward, clock, 2.0)
    verify = steward.submit(Command(kind="verify", model=MODEL))
    steward.tick()
    with pytest.raises(VerifyUnsupported, match="cannot be verified"):
        verify.result(timeout=1)


def test_a_command_wakes_the_running_loop_at_once() -> None:
    """The loop sleeps for its idle interval (2 s) unless a command wakes it: it must answer in ms."""
    runtime = build_runtime(Settings(), simulate="desktop-idle", with_api=False, audit=False)
    runtime.start_worker()
    try:
        deadline = time.monotonic() + 5
        while runtime.steward.snapshot is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the loop now waits out its idle interval
        waits = []
        for _ in range(10):
            started = time.monotonic()
            runtime.steward.submit(Command(kind="show")).result(timeout=3)
            waits.append(time.monotonic() - started)
            time.sleep(0.05)
        assert max(waits) < 0.6, waits  # a loop that waited out its 2 s idle poll would fail
    finally:
        runtime.stop()


def test_callers_on_other_threads_never_touch_engine_state(engine: Any) -> None:
    """Many threads submitting at once: each gets its own outcome, in one tick."""
    steward, clock, _events = engine
    run_for(steward, clock, 2.0)
    futures: list[Any] = []
    lock = threading.Lock()

    def submit() -> None:
        future = steward.submit(Command(kind="show"))
        with lock:
            futures.append(future)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steward.tick()
    assert len(futures) == 20 and all(f.result(timeout=1).command == "show" for f in futures)


def test_resumed_says_how_long_the_models_were_out(engine: Any) -> None:
    """game-launch: evicted when GameMode registers the game at 20 s, back 30 s after its signal ends at
    121 s: out for about 131 s, not "0 s"."""
    steward, clock, events = engine
    snapshot = steward.tick()
    while clock() < 200:
        clock.advance(snapshot.next_poll_s)
        snapshot = steward.tick()
    evicted = next(e for e in events if isinstance(e, ev.ModelsEvicted))
    resumed = next(e for e in events if isinstance(e, ev.Resumed))
    assert resumed.after_s == pytest.approx(resumed.at - evicted.at)
    assert 125 <= resumed.after_s <= 140, resumed.after_s


def test_the_status_document_counts_down_to_the_reload(engine: Any) -> None:
    steward, clock, _events = engine
    snapshot = steward.tick()
    while clock() < 125:  # the game's signal ended at 121 s: the cooldown runs to 151 s
        clock.advance(snapshot.next_poll_s)
        snapshot = steward.tick()
    status = snapshot.to_status()
    assert status["resume_in_s"] == pytest.approx(snapshot.resume_at - snapshot.telemetry.taken_at)
    assert 25 <= status["resume_in_s"] <= 30
    assert status["reasons"], "the document says why the models wait"
