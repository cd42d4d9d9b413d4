"""A host that dies (killed, CUDA error) is noticed within one poll(): HostDied, its models evicted, its
reservations released, and the next load starts a new host."""

from __future__ import annotations

from pathlib import Path

from residency_world import expected_digest, make_world, write_model

from app.core import events as ev
from app.core.holders import ModelState
from app.core.units import MiB


def test_a_killed_host_is_noticed_in_one_poll_and_the_next_load_starts_a_new_one(tmp_path: Path) -> None:
    write_model(tmp_path / "a.bin", 1 * MiB)
    data = write_model(tmp_path / "b.bin", 2 * MiB, seed=2)
    world = make_world(tmp_path, [("a", tmp_path / "a.bin"), ("b", tmp_path / "b.bin")])
    world.manager.load_blocking("a", timeout_s=10)
    world.manager.load_blocking("b", timeout_s=10)
    handle = world.manager.host_handle(0)
    assert handle is not None
    old_pid = handle.pid

    handle.kill()  # the pipe breaks at once, as with kill -9
    events = world.manager.poll()

    died = [e for e in events if isinstance(e, ev.HostDied)]
    assert len(died) == 1
    assert (died[0].pid, died[0].gpu, died[0].exit_code, died[0].models) == (old_pid, 0, -9, ("a", "b"))
    dealloc = [e for e in events if isinstance(e, ev.VramDeallocated)]
    assert {e.model for e in dealloc} == {"a", "b"} and {e.reason for e in dealloc} == {"host_died"}
    assert all(e.residue_bytes == 0 for e in dealloc)
    assert {s.name: s.state for s in world.manager.models()} == {
        "a": ModelState.EVICTED,
        "b": ModelState.EVICTED,
    }
    assert all("died" in (s.last_error or "") for s in world.manager.models())
    assert world.ours() == 0 and world.manager.pids() == set()
    assert [e["type"] for e in world.audit.read()].count("HostDied") == 1
    assert world.manager.poll() == []  # reported once

    world.observe()
    sealed = world.manager.load_blocking("b", timeout_s=10)
    assert sealed is not None and sealed.digest == expected_digest(data)
    new = world.manager.host_handle(0)
    assert new is not None and new.pid != old_pid and world.manager.pids() == {new.pid}


def test_a_host_that_dies_mid_seal_fails_the_load_with_a_clear_error(tmp_path: Path) -> None:
    write_model(tmp_path / "m.bin", 4 * MiB)
    world = make_world(tmp_path, [("m", tmp_path / "m.bin")])
    world.manager.start_load("m")
    handle = world.manager.host_handle(0)
    assert handle is not None
    handle.kill()
    events = world.manager.poll()
    assert next(type(e).__name__ for e in events if not isinstance(e, ev.LoadProgress)) == "HostDied"
    status = world.manager.models()[0]
    assert status.state == ModelState.EVICTED and "died" in (status.last_error or "")
    assert world.ledgers[0].outstanding_bytes() == 0 and world.ours() == 0
