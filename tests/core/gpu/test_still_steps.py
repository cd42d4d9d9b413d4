"""The engine's idle path through the REAL nvidia-ml-py against the stand-in libnvidia-ml.so.1.

While models sit resident, most 100 ms steps find the world as it was: `NvmlBackend.probe()` reads each GPU's
used memory (one NVML call) and `Steward.step()` hands the last snapshot back without the process lists,
classification or decision. Anything that moves (an allocation, a command, a game signal, time passing
REFRESH_S) brings the full tick back at once. The fake's call counters show which NVML calls ran."""

from __future__ import annotations

from pathlib import Path

from app.core.engine.steward import REFRESH_S, Steward
from app.core.gpu.nvml import NvmlBackend
from app.core.policy.contention import Command
from app.core.policy.signals import GameSignal, ScriptedSignals
from app.core.settings import Settings
from app.core.units import GiB, MiB
from tests.fixtures.fake_nvml import FakeNvml, gpu_line, proc_line

MEMORY = "nvmlDeviceGetMemoryInfo_v2"
PROCESSES = "nvmlDeviceGetComputeRunningProcesses_v3"
TOTAL = 24 * GiB


def world(used: int, *procs: tuple[int, int, str], bus: str = "") -> str:
    text = gpu_line(0, name="NVIDIA_RTX_4090", uuid="GPU-cccc", total=TOTAL, reserved=300 * MiB, used=used)
    if bus:
        text = text.replace("\n", f" bus={bus}\n")
    return text + "".join(proc_line(pid, size, kind="graphics", name=name) for pid, size, name in procs)


DESKTOP = ((1201, 200 * MiB, "Xorg"), (1650, 120 * MiB, "gnome-shell"))


def engine(clock, signals: ScriptedSignals | None = None, sysfs: Path | None = None) -> Steward:  # type: ignore[no-untyped-def]
    backend = NvmlBackend(clock=clock, **({"sysfs_root": sysfs} if sysfs else {}))
    return Steward(Settings(), backend, [], signals=signals, clock=clock, autoload=False)


def test_probe_is_one_memory_call_per_gpu_and_moves_with_any_allocation(fake_nvml: FakeNvml, clock) -> None:
    fake_nvml.write(world(320 * MiB, *DESKTOP))
    backend = NvmlBackend(clock=clock)
    assert backend.probe() is None  # NVML not started yet: only a full sample can say why
    backend.sample()
    fake_nvml.reset_calls()
    first = backend.probe()
    assert first == (320 * MiB,)
    assert (fake_nvml.calls(MEMORY), fake_nvml.calls(PROCESSES)) == (1, 0)
    assert backend.probe() == first
    fake_nvml.write(world(320 * MiB + 1 * GiB, *DESKTOP, (4242, GiB, "game")))
    assert backend.probe() == (320 * MiB + GiB,)
    fake_nvml.write(world(320 * MiB, *DESKTOP) + "fail nvmlDeviceGetMemoryInfo_v2 unknown gpu=0\n")
    assert backend.probe() is None  # an error: the full sample reports it
    backend.close()
    assert backend.probe() is None


def test_probe_never_wakes_a_runtime_suspended_gpu(fake_nvml: FakeNvml, clock, tmp_path: Path) -> None:
    fake_nvml.write(world(0, bus="00000000:0A:00.0"))
    backend = NvmlBackend(clock=clock, sysfs_root=tmp_path)
    backend.sample()
    power = tmp_path / "bus" / "pci" / "devices" / "0000:0a:00.0" / "power"
    power.mkdir(parents=True)
    (power / "runtime_status").write_text("suspended\n")
    fake_nvml.reset_calls()
    asleep = backend.probe()
    assert fake_nvml.calls(MEMORY) == 0
    (power / "runtime_status").write_text("active\n")
    assert backend.probe() != asleep  # awake again: asked, and the change shows
    assert fake_nvml.calls(MEMORY) == 1
    backend.close()


def test_still_steps_skip_the_full_tick_until_something_moves(fake_nvml: FakeNvml, clock) -> None:
    fake_nvml.write(world(320 * MiB, *DESKTOP))
    signals = ScriptedSignals()
    steward = engine(clock, signals)
    assert steward.step().tick == 1  # no snapshot yet: a full tick (NVML starts in it, so no probe before)
    clock.advance(0.1)
    first = steward.step()  # a full tick with a probe taken before its sample
    assert first.state == "idle" and first.tick == 2
    fake_nvml.reset_calls()

    for _ in range(9):  # 0.9 s of 100 ms steps with nothing moving
        clock.advance(0.1)
        assert steward.step() is first
    assert steward.probes == 9
    assert fake_nvml.calls(PROCESSES) == 0, "still steps must not list processes"
    assert fake_nvml.calls(MEMORY) == 9

    # a foreign process allocates: used memory moves, so the very next step is a full tick that sees it
    fake_nvml.write(world(320 * MiB + 3 * GiB, *DESKTOP, (4242, 3 * GiB, "blender")))
    clock.advance(0.1)
    moved = steward.step()
    assert moved is not first and moved.tick == 3
    assert 4242 in {p.pid for p in moved.telemetry.gpus[0].processes}

    # REFRESH_S with nothing moving: a full tick anyway (sensors, reservations, timers)
    probes = steward.probes
    while steward.probes - probes < 100:
        clock.advance(0.1)
        snapshot = steward.step()
        if snapshot.tick > moved.tick:
            break
    assert snapshot.tick == moved.tick + 1
    assert snapshot.telemetry.taken_at - moved.telemetry.taken_at >= REFRESH_S - 1e-9

    # a command always takes the full path, and is answered
    clock.advance(0.1)
    future = steward.submit(Command(kind="pause"))
    paused = steward.step()
    outcome = future.result(timeout=1)
    assert paused.state == "paused" and outcome.command == "pause" and outcome.state == "paused"
    steward.submit(Command(kind="resume"))
    clock.advance(0.1)
    resumed = steward.step()
    for _ in range(3):  # settle back to a quiet state
        clock.advance(0.1)
        resumed = steward.step()

    # a game signal changes the world even though VRAM did not move yet
    before = resumed.tick
    clock.advance(0.1)
    assert steward.step().tick == before  # still
    signals.games = (GameSignal(name="Cyberpunk 2077", source="gamemode", pid=None, started_at=0.0),)
    clock.advance(0.1)
    gamed = steward.step()
    assert gamed.tick == before + 1
    assert [g.name for g in gamed.games] == ["Cyberpunk 2077"]
    steward.shutdown()


def test_a_backend_that_cannot_probe_is_sampled_every_step(clock) -> None:  # type: ignore[no-untyped-def]
    from app.core.gpu.simulated import SimulatedBackend

    sim = SimulatedBackend.from_file("desktop-idle")
    sim.set_clock(clock)
    steward = Steward(Settings(), sim, [], clock=clock, autoload=False)
    ticks = [steward.step().tick]
    for _ in range(5):
        clock.advance(0.1)
        ticks.append(steward.step().tick)
    assert ticks == [1, 2, 3, 4, 5, 6]
    assert steward.probes == 0
    steward.shutdown()
