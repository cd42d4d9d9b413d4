"""The idle fast path: while nothing a decision depends on changes, the engine does not classify and decide
again (most ticks while models sit resident at 10 Hz); any change brings the full tick back at once."""

from __future__ import annotations

from app.core.config import Settings
from app.core.gpu.simulated import ManualClock
from app.core.policy.contention import Command
from app.core.wiring import build_runtime


def test_unchanged_world_skips_decisions_and_a_change_is_seen_at_once() -> None:
    clock = ManualClock()
    runtime = build_runtime(Settings(), simulate="game-launch", clock=clock, with_api=False, audit=False)
    steward = runtime.steward
    calls = {"classify": 0}
    real_classify = steward.classifier.classify

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["classify"] += 1
        return real_classify(*args, **kwargs)

    steward.classifier.classify = counting  # type: ignore[method-assign]
    while clock.now_s < 10.0:  # the model loads (~1 s), then sits resident on a quiet desktop
        snapshot = steward.tick()
        clock.advance(snapshot.next_poll_s)
    assert snapshot.state == "active"
    before = calls["classify"]
    ticks = 0
    while clock.now_s < 19.9:
        snapshot = steward.tick()
        ticks += 1
        clock.advance(snapshot.next_poll_s)
    assert ticks >= 90
    assert calls["classify"] == before, "quiet ticks must not classify again"
    assert snapshot.tick > 0 and snapshot.telemetry.taken_at >= 19.0, (
        "the snapshot still carries fresh telemetry"
    )
    # the game signal at 20 s changes the world: the full tick runs and evicts at once
    while clock.now_s < 20.05:
        snapshot = steward.tick()
        clock.advance(0.1)
    snapshot = steward.tick()
    assert calls["classify"] > before
    assert snapshot.state == "evicted_for_game"
    # a command always takes the full path
    calls["classify"] = 0
    steward.submit(Command(kind="pause"))
    assert steward.tick().state == "paused"
    assert calls["classify"] == 1
    steward.shutdown()
