"""A model refused for lack of room is not given up: it waits (state "waiting", with the reason), is retried
when the application that blocked it exits, and each refusal is one event."""

from __future__ import annotations

from app.core import events as ev
from app.core.config import Settings
from app.core.engine.steward import Steward
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.residency.ledger import Ledgers
from app.core.residency.simulated_holder import SimulatedHolder, SimulatedModel
from app.core.units import GiB

BLOCKED = """
description = "Blender holds 9 GiB of 12 GiB when VRAM Steward starts, and exits at 20 s"
duration_s = 600

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 3060"
uuid = "GPU-5e1a0c7e-0000-4000-8000-000000003060"
total = "12 GiB"
reserved = "256 MiB"

[[processes]]
pid = 3100
name = "blender"
used = "9 GiB"
kind = "compute"

[[timeline]]
at = 20.0
event = "process_exit"
pid = 3100
"""


def test_a_model_refused_at_start_is_loaded_once_the_blocker_exits() -> None:
    clock = ManualClock()
    sim = SimulatedBackend(parse_scenario(BLOCKED, name="blocked"), clock=clock)
    settings = Settings(auto_evict=False)  # Blender is the user's: it is never what we act on here
    ledgers = Ledgers(settings.headroom_bytes, clock=clock)
    holder = SimulatedHolder(sim, [SimulatedModel("chat-4b", 0, 4 * GiB)], ledgers, clock=clock)
    steward = Steward(settings, sim, [holder], ledgers=ledgers, clock=clock)  # autoload: the load at start
    events: list[ev.Event] = []
    steward.subscribe(events.append)
    snapshot = steward.tick()
    while clock() < 10:
        clock.advance(snapshot.next_poll_s)
        snapshot = steward.tick()
    (model,) = snapshot.models
    assert model.state == "waiting" and model.last_error, model
    assert any("chat-4b" in r and "blender" in r for r in snapshot.reasons), snapshot.reasons  # why it waits
    assert len([e for e in events if isinstance(e, ev.LoadRefused)]) == 1, "one refusal, one event"
    while clock() < 90:
        clock.advance(snapshot.next_poll_s)
        snapshot = steward.tick()
    assert snapshot.models[0].state == "resident"
    assert sim.our_bytes(0) == 4 * GiB
    assert len([e for e in events if isinstance(e, ev.LoadRefused)]) == 1, "no retry storm while it waited"
    steward.shutdown()


def test_the_tick_that_starts_a_load_polls_at_the_busy_pace() -> None:
    """A load decided while nothing was held must not leave the next look 2 s away: a game signal during
    the load would be seen late, and the model allocated and evicted in one tick ("freed 0.0 GiB")."""
    from app.core.wiring import build_runtime

    clock = ManualClock()
    runtime = build_runtime(Settings(), simulate="game-launch", clock=clock, with_api=False, audit=False)
    try:
        first = runtime.steward.tick()  # starts the autoload of the 8 GiB model
        assert [m.state for m in first.models] == ["loading"]
        assert first.next_poll_s == runtime.steward.settings.poll_interval_secs
    finally:
        runtime.stop()
