"""NvmlBackend through the REAL nvidia-ml-py code, against a stand-in libnvidia-ml.so.1 built from nvml.h."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from app.core.gpu.backend import GpuBackend
from app.core.gpu.nvml import RESERVED_V1_REASON, USED_NA_REASON, NvmlBackend, sysfs_bus_id
from app.core.gpu.snapshot import BackendState, GpuState, ProcessKind
from app.core.units import GiB, MiB
from tests.fixtures.fake_nvml import STATE_ENV, FakeNvml, build, gpu_line, proc_line

REPO = Path(__file__).resolve().parents[3]
H200_TOTAL = 150754820096
H200_RESERVED = 519045120
H200 = gpu_line(
    0,
    name="NVIDIA_H200",
    uuid="GPU-aaaa",
    total=H200_TOTAL,
    reserved=H200_RESERVED,
    used=MiB,
    util=7,
    temp=34,
)
L4 = gpu_line(1, name="NVIDIA_L4", uuid="GPU-bbbb", total=23034593280, used=2 * GiB, temp=51, util=90)
COMPUTE_V3 = "nvmlDeviceGetComputeRunningProcesses_v3"


def test_is_a_gpu_backend() -> None:
    backend = NvmlBackend()
    assert isinstance(backend, GpuBackend)
    assert backend.name == "nvml"


def test_one_gpu_through_memory_v2(fake_nvml: FakeNvml, clock) -> None:
    fake_nvml.write(H200)
    backend = NvmlBackend(clock=clock)
    snap = backend.sample()
    backend.close()

    assert (snap.backend, snap.state, snap.taken_at, snap.driver_version) == (
        "nvml",
        "ok",
        clock(),
        "560.35.03",
    )
    (gpu,) = snap.gpus
    assert (gpu.index, gpu.name, gpu.uuid, gpu.state) == (0, "NVIDIA H200", "GPU-aaaa", GpuState.OK)
    assert gpu.total_bytes == H200_TOTAL
    assert gpu.used_bytes == MiB
    assert gpu.reserved_bytes == H200_RESERVED
    assert gpu.free_bytes == H200_TOTAL - H200_RESERVED - MiB
    assert (gpu.temperature_c, gpu.utilization_percent) == (34, 7)
    assert gpu.processes == () and gpu.unavailable == ()


@pytest.mark.parametrize(
    "how_v2_fails",
    ["missing nvmlDeviceGetMemoryInfo_v2", "fail nvmlDeviceGetMemoryInfo_v2 argument_version_mismatch"],
)
def test_memory_falls_back_to_v1_and_remembers(fake_nvml: FakeNvml, how_v2_fails: str) -> None:
    fake_nvml.write(H200 + how_v2_fails + "\n")
    backend = NvmlBackend()
    first, second = backend.sample(), backend.sample()
    backend.close()

    gpu = second.gpus[0]
    assert gpu.state == GpuState.OK and first.gpus[0] == gpu
    assert gpu.reserved_bytes is None
    assert gpu.reason("reserved_bytes") == RESERVED_V1_REASON
    assert gpu.used_bytes == MiB + H200_RESERVED  # v1 folds the reserved memory into used
    assert gpu.free_bytes == H200_TOTAL - H200_RESERVED - MiB
    assert fake_nvml.calls("nvmlDeviceGetMemoryInfo_v2") == 1  # not asked again
    assert fake_nvml.calls("nvmlDeviceGetMemoryInfo") == 2
    assert backend.query_errors_total == 0


def test_compute_and_graphics_lists_merged_by_pid(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(
        H200
        + proc_line(4242, 2 * GiB, kind="compute", name="trainer")
        + proc_line(77, 300 * MiB, kind="graphics", name="Xorg")
        + proc_line(500, GiB, kind="both", name="blender")  # one record listed in both
        + proc_line(600, 512 * MiB, kind="compute", name="game")  # the same pid in two records
        + proc_line(600, 512 * MiB, kind="graphics", name="game")
    )
    backend = NvmlBackend()
    gpu = backend.sample().gpus[0]
    backend.close()

    summary = [(p.pid, p.name, p.kind, p.used_bytes) for p in gpu.processes]
    assert summary == [
        (77, "Xorg", ProcessKind.GRAPHICS, 300 * MiB),
        (500, "blender", ProcessKind.BOTH, GiB),  # counted once, not twice
        (600, "game", ProcessKind.BOTH, 512 * MiB),
        (4242, "trainer", ProcessKind.COMPUTE, 2 * GiB),
    ]
    assert gpu.process(4242) is not None and gpu.process(4242).used_unavailable_reason is None


def test_process_lists_use_the_two_call_size_protocol(fake_nvml: FakeNvml) -> None:
    backend = NvmlBackend()
    fake_nvml.write(H200)
    backend.sample()
    assert fake_nvml.calls(COMPUTE_V3) == 1  # empty: the size query answers 0 at once
    fake_nvml.reset_calls()
    fake_nvml.write(H200 + "".join(proc_line(1000 + i, MiB, name=f"w{i}") for i in range(20)))
    gpu = backend.sample().gpus[0]
    backend.close()
    # the first call (no buffer) gets NVML_ERROR_INSUFFICIENT_SIZE and the count, the second fills
    assert fake_nvml.calls(COMPUTE_V3) == 2
    assert [p.pid for p in gpu.processes] == list(range(1000, 1020))


def test_memory_not_available_is_none_with_a_reason(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(H200 + proc_line(31, "na", name="wddm_app") + proc_line(32, "na", kind="both"))
    backend = NvmlBackend()
    gpu = backend.sample().gpus[0]
    backend.close()

    for pid in (31, 32):
        process = gpu.process(pid)
        assert process is not None and process.used_bytes is None
        assert process.used_unavailable_reason == USED_NA_REASON
        assert process.to_json()["used_bytes"] is None


def test_process_names_nvml_then_psutil_then_pid(fake_nvml: FakeNvml) -> None:
    me = os.getpid()
    beyond_pid_max = 4_194_304 + 17  # above Linux's largest pid_max: no such process
    fake_nvml.write(
        H200
        + proc_line(me, MiB)
        + proc_line(beyond_pid_max, MiB)
        + "fail nvmlSystemGetProcessName not_found\n"
    )
    backend = NvmlBackend()
    gpu = backend.sample().gpus[0]
    assert gpu.process(me).name == psutil.Process(me).name()
    assert gpu.process(beyond_pid_max).name == f"pid {beyond_pid_max}"

    fake_nvml.write(H200 + proc_line(me, MiB) + proc_line(4242, MiB, name="trainer"))
    fake_nvml.reset_calls()
    gpu = backend.sample().gpus[0]
    backend.sample()
    backend.close()
    assert gpu.process(4242).name == "trainer"  # NVML's name first
    assert gpu.process(me).name == psutil.Process(me).name()  # cached while the pid stays listed
    assert fake_nvml.calls("nvmlSystemGetProcessName") == 1  # 4242 only, once


@pytest.mark.parametrize(
    ("missing", "used_function"),
    [
        (["_v3"], "_v2"),
        (["_v3", "_v2"], ""),  # the original v1 call, which nvidia-ml-py no longer wraps
    ],
)
def test_process_list_falls_back_and_remembers(
    fake_nvml: FakeNvml, missing: list[str], used_function: str
) -> None:
    names = [
        f"nvmlDevice{verb}RunningProcesses{end}" for verb in ("GetCompute", "GetGraphics") for end in missing
    ]
    fake_nvml.write(
        H200
        + proc_line(4242, 2 * GiB, name="trainer")
        + proc_line(77, 300 * MiB, kind="graphics", name="Xorg")
        + "missing "
        + " ".join(names)
        + "\n"
    )
    backend = NvmlBackend()
    snaps = [backend.sample() for _ in range(3)]
    backend.close()

    for snap in snaps:
        gpu = snap.gpus[0]
        assert gpu.state == GpuState.OK
        assert [(p.pid, p.kind, p.used_bytes) for p in gpu.processes] == [
            (77, ProcessKind.GRAPHICS, 300 * MiB),
            (4242, ProcessKind.COMPUTE, 2 * GiB),
        ]
    for name in names:
        assert fake_nvml.calls(name) == 1, f"{name} asked again after it was found missing"
    assert fake_nvml.calls(f"nvmlDeviceGetComputeRunningProcesses{used_function}") == 3 * 2  # size + fill
    assert backend.query_errors_total == 0


def test_no_process_call_at_all_leaves_the_gpu_ok(fake_nvml: FakeNvml) -> None:
    suffixes = ("_v3", "_v2", "")
    names = [f"nvmlDevice{v}RunningProcesses{s}" for v in ("GetCompute", "GetGraphics") for s in suffixes]
    fake_nvml.write(H200 + proc_line(4242, GiB) + "missing " + " ".join(names) + "\n")
    backend = NvmlBackend()
    gpu = backend.sample().gpus[0]
    backend.close()
    assert gpu.state == GpuState.OK and gpu.processes == ()
    assert "no call that lists compute processes" in (gpu.reason("processes") or "")


def test_temperature_not_supported_is_asked_once(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(H200 + "fail nvmlDeviceGetTemperature not_supported gpu=0\n")
    backend = NvmlBackend()
    gpu = backend.sample().gpus[0]
    backend.sample()
    backend.close()
    assert gpu.temperature_c is None and gpu.utilization_percent == 7
    assert "not supported" in (gpu.reason("temperature_c") or "")
    assert fake_nvml.calls("nvmlDeviceGetTemperature") == 1
    assert backend.query_errors_total == 0


def test_failing_utilization_is_counted_and_asked_again(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(H200 + "fail nvmlDeviceGetUtilizationRates unknown\n")
    backend = NvmlBackend()
    gpu = backend.sample().gpus[0]
    backend.sample()
    backend.close()
    assert gpu.state == GpuState.OK and gpu.utilization_percent is None and gpu.temperature_c == 34
    assert "NVML query failed" in (gpu.reason("utilization_percent") or "")
    assert fake_nvml.calls("nvmlDeviceGetUtilizationRates") == 2
    assert backend.query_errors_total == 2


@pytest.mark.parametrize(
    ("init", "state", "words"),
    [
        ("driver_not_loaded", BackendState.NO_DRIVER, ["NVIDIA driver not found", "modprobe"]),
        (
            "lib_rm_version_mismatch",
            BackendState.DRIVER_MISMATCH,
            ["Driver/library version mismatch", "driver was updated", "Restart", "reboot"],
        ),
        ("no_permission", BackendState.NO_PERMISSION, ["No permission", "/dev/nvidiactl"]),
        ("unknown", BackendState.ERROR, ["NVML does not work"]),
    ],
)
def test_init_failures_are_typed_states(
    fake_nvml: FakeNvml, init: str, state: BackendState, words: list[str]
) -> None:
    fake_nvml.write(f"init {init}\n" + H200)
    backend = NvmlBackend()
    snap = backend.sample()
    backend.close()
    assert snap.state == state and snap.gpus == ()
    for word in words:
        assert word in (snap.message or ""), snap.message
    assert backend.query_errors_total == 1


def test_lost_gpu_while_another_keeps_working(fake_nvml: FakeNvml, clock) -> None:
    fake_nvml.write(H200 + L4)
    backend = NvmlBackend(clock=clock)
    assert [g.state for g in backend.sample().gpus] == [GpuState.OK, GpuState.OK]

    fake_nvml.write(H200.replace("\n", " lost=1\n") + L4)
    clock.advance(0.1)
    snap = backend.sample()
    backend.close()

    assert snap.state == BackendState.OK
    lost, working = snap.gpus
    assert lost.state == GpuState.LOST and lost.name == "NVIDIA H200" and lost.uuid == "GPU-aaaa"
    assert "fallen off the bus" in (lost.message or "") and "reboot" in (lost.message or "")
    assert lost.free_bytes == 0 and lost.total_bytes == H200_TOTAL and lost.processes == ()
    assert working.state == GpuState.OK and working.used_bytes == 2 * GiB and working.temperature_c == 51
    assert backend.query_errors_total == 1


def test_gpu_errors_back_off_and_recover(fake_nvml: FakeNvml, clock) -> None:
    failing = H200 + L4 + "fail nvmlDeviceGetMemoryInfo_v2 unknown gpu=0\n"
    fake_nvml.write(failing)
    backend = NvmlBackend(clock=clock, backoff_initial_s=0.5, backoff_max_s=2.0)

    def gpu0_calls() -> int:
        return fake_nvml.calls("nvmlDeviceGetHandleByIndex_v2")

    first = backend.sample()
    assert first.gpus[0].state == GpuState.ERROR and first.gpus[1].state == GpuState.OK
    assert "does not answer" in (first.gpus[0].message or "")
    assert backend.query_errors_total == 1
    # handles: one per GPU at the first sample; gpu 0 asks again at each retry (a reset makes them stale)
    asked = gpu0_calls()

    delays = []
    for _ in range(5):  # 0.5, 1, 2, 2, 2 s: exponential, capped
        start = clock()
        while True:
            clock.advance(0.25)
            snap = backend.sample()
            assert snap.gpus[0].state == GpuState.ERROR
            assert snap.gpus[1].state == GpuState.OK  # the other GPU is sampled every time
            if gpu0_calls() != asked:
                asked = gpu0_calls()
                break
        delays.append(clock() - start)
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert backend.query_errors_total == 6

    fake_nvml.write(H200 + L4)  # the driver answers again
    clock.advance(2.0)
    recovered = backend.sample()
    assert recovered.gpus[0].state == GpuState.OK and recovered.gpus[0].used_bytes == MiB
    assert backend.query_errors_total == 6

    fake_nvml.write(failing)  # a new failure starts again from the shortest delay
    clock.advance(0.25)
    assert backend.sample().gpus[0].state == GpuState.ERROR
    before = gpu0_calls()
    clock.advance(0.25)
    backend.sample()
    assert gpu0_calls() == before
    clock.advance(0.25)
    backend.sample()
    backend.close()
    assert gpu0_calls() == before + 1


def test_while_backing_off_the_last_state_is_returned_without_nvml(fake_nvml: FakeNvml, clock) -> None:
    fake_nvml.write(H200 + "fail nvmlDeviceGetMemoryInfo_v2 unknown\n")
    backend = NvmlBackend(clock=clock)
    first = backend.sample()
    fake_nvml.reset_calls()
    clock.advance(0.2)
    again = backend.sample()
    backend.close()
    assert again.gpus[0] is first.gpus[0]
    assert again.taken_at == first.taken_at + 0.2
    device_calls = [
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetMemoryInfo",
        COMPUTE_V3,
    ]
    assert [fake_nvml.calls(name) for name in device_calls] == [0, 0, 0, 0]


def test_driver_that_appears_later_is_picked_up(fake_nvml: FakeNvml, clock) -> None:
    fake_nvml.write("init driver_not_loaded\n" + H200)
    backend = NvmlBackend(clock=clock, backoff_initial_s=1.0, backoff_max_s=8.0)
    assert backend.sample().state == BackendState.NO_DRIVER
    assert fake_nvml.calls("nvmlInitWithFlags") == 1

    clock.advance(0.5)  # backing off: the last state, no nvmlInit
    snap = backend.sample()
    assert snap.state == BackendState.NO_DRIVER and snap.taken_at == clock()
    assert fake_nvml.calls("nvmlInitWithFlags") == 1

    clock.advance(0.5)
    assert backend.sample().state == BackendState.NO_DRIVER
    assert fake_nvml.calls("nvmlInitWithFlags") == 2
    assert backend.query_errors_total == 2

    fake_nvml.write(H200)  # the module is loaded now
    clock.advance(1.0)
    assert backend.sample().state == BackendState.NO_DRIVER  # still backing off (2 s after 2 failures)
    clock.advance(1.0)
    snap = backend.sample()
    backend.close()
    assert snap.state == BackendState.OK and snap.gpus[0].name == "NVIDIA H200"
    assert fake_nvml.calls("nvmlInitWithFlags") == 3


@pytest.mark.parametrize(
    ("error", "state"),
    [
        ("driver_not_loaded", BackendState.NO_DRIVER),
        ("lib_rm_version_mismatch", BackendState.DRIVER_MISMATCH),
    ],
)
def test_driver_gone_mid_run_restarts_nvml(
    fake_nvml: FakeNvml, clock, error: str, state: BackendState
) -> None:
    fake_nvml.write(H200)
    backend = NvmlBackend(clock=clock)
    assert backend.sample().state == BackendState.OK

    fake_nvml.write(H200 + f"fail nvmlDeviceGetMemoryInfo_v2 {error}\n" + f"init {error}\n")
    clock.advance(0.1)
    snap = backend.sample()
    assert snap.state == state and snap.gpus == ()
    assert fake_nvml.calls("nvmlShutdown") == 1  # NVML is shut down, to be started again

    fake_nvml.write(H200)
    clock.advance(0.5)  # the first retry waits BACKOFF_INITIAL_S
    snap = backend.sample()
    backend.close()
    assert snap.state == BackendState.OK and snap.gpus[0].state == GpuState.OK
    assert fake_nvml.calls("nvmlInitWithFlags") == 2


def test_watch_only_some_gpus(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(H200 + L4)
    only_l4 = NvmlBackend(gpu_indices=[1])
    assert [g.name for g in only_l4.sample().gpus] == ["NVIDIA L4"]
    only_l4.close()

    with_typo = NvmlBackend(gpu_indices=[5, 0])
    gpus = with_typo.sample().gpus
    with_typo.close()
    assert [(g.index, g.state) for g in gpus] == [(0, GpuState.OK), (5, GpuState.ERROR)]
    assert "GPU 5 not found: NVML lists 2 GPU(s) (indices 0-1)" in (gpus[1].message or "")
    assert "gpu_device" in (gpus[1].message or "")


def test_runtime_suspended_reads_sysfs(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    fake_nvml.write(H200.replace("\n", " bus=00000000:0A:00.0\n"))
    backend = NvmlBackend(sysfs_root=tmp_path)
    assert backend.is_runtime_suspended(0) is None  # no bus id before the first sample
    backend.sample()
    backend.close()
    power = tmp_path / "bus" / "pci" / "devices" / "0000:0a:00.0" / "power"
    assert backend.is_runtime_suspended(0) is None  # no such file (no runtime PM, or not Linux)
    power.mkdir(parents=True)
    for status, expected in [("suspended\n", True), ("active\n", False), ("unsupported\n", False)]:
        (power / "runtime_status").write_text(status)
        assert backend.is_runtime_suspended(0) is expected
    assert backend.is_runtime_suspended(3) is None


def test_sysfs_bus_id() -> None:
    assert sysfs_bus_id("00000000:01:00.0") == "0000:01:00.0"
    assert sysfs_bus_id("00000001:C1:00.0") == "0001:c1:00.0"
    assert sysfs_bus_id("garbage") is None


def test_close_shuts_nvml_down_once(fake_nvml: FakeNvml) -> None:
    fake_nvml.write(H200)
    backend = NvmlBackend()
    backend.sample()
    backend.close()
    backend.close()
    assert fake_nvml.calls("nvmlShutdown") == 1
    fake_nvml.reset_calls()
    snap = backend.sample()
    assert snap.state == BackendState.ERROR and "closed" in (snap.message or "")
    assert fake_nvml.calls("nvmlInitWithFlags") == 0


def test_close_before_any_sample_never_touches_nvml(fake_nvml: FakeNvml) -> None:
    NvmlBackend().close()
    assert fake_nvml.calls("nvmlInitWithFlags") == fake_nvml.calls("nvmlShutdown") == 0


# ---- in a fresh process: pynvml keeps the first library it loads for the life of the process ----

CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    if sys.argv[1]:
        ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
    else:
        try:  # a real driver here would make the "no library" case impossible to see
            ctypes.CDLL("libnvidia-ml.so.1")
            print(json.dumps({"skip": "a real libnvidia-ml.so.1 is installed"}))
            sys.exit(0)
        except OSError:
            pass
    from app.core.gpu.backend import open_backend
    from app.core.gpu.nvml import NvmlBackend
    direct = NvmlBackend()
    snap = direct.sample()
    direct.close()
    chosen = open_backend()
    first = chosen.sample()
    gpu = first.gpus[0] if first.gpus else None
    print(json.dumps({
        "direct": [snap.state, snap.message],
        "chosen": [chosen.name, first.state, first.message],
        "reserved": gpu and gpu.reserved_bytes,
        "processes": gpu and [[p.pid, p.kind, p.used_bytes] for p in gpu.processes],
    }))
    """
)


def _run_child(library: Path | None, state_file: Path | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in (STATE_ENV, "LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["PYTHONPATH"] = str(REPO)
    if state_file is not None:
        env[STATE_ENV] = str(state_file)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(library or "")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_library_means_null_backend_with_no_driver() -> None:
    out = _run_child(None, None)
    if "skip" in out:
        pytest.skip(str(out["skip"]))
    state, message = out["direct"]
    assert state == "no_driver" and message.startswith("NVIDIA driver not found (libnvidia-ml.so.1")
    name, state, message = out["chosen"]
    assert (name, state) == ("none", "no_driver") and message.startswith("NVIDIA driver not found")


def test_old_driver_without_v2_and_v3_symbols(tmp_path: Path) -> None:
    """Symbols truly absent (as in a driver before R510): pynvml's own FunctionNotFound path."""
    library = build(tmp_path / "old", old_driver=True)
    state_file = tmp_path / "state.txt"
    state_file.write_text(H200 + proc_line(4242, 2 * GiB) + proc_line(77, MiB, kind="graphics"))
    out = _run_child(library, state_file)
    assert out["direct"][0] == "ok"
    assert out["chosen"][:2] == ["nvml", "ok"]
    assert out["reserved"] is None
    assert out["processes"] == [[77, "graphics", MiB], [4242, "compute", 2 * GiB]]


def test_a_runtime_suspended_gpu_is_not_queried(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    """Any NVML query wakes a sleeping laptop dGPU: while sysfs says it is suspended we do not ask NVML about
    it, and report it idle (nothing can run on a sleeping GPU)."""
    fake_nvml.write(H200.replace("\n", " bus=00000000:0A:00.0\n"))
    backend = NvmlBackend(sysfs_root=tmp_path)
    first = backend.sample().gpus[0]
    power = tmp_path / "bus" / "pci" / "devices" / "0000:0a:00.0" / "power"
    power.mkdir(parents=True)
    (power / "runtime_status").write_text("suspended\n")
    fake_nvml.reset_calls()
    asleep = backend.sample().gpus[0]
    assert fake_nvml.calls("nvmlDeviceGetMemoryInfo_v2") == 0
    assert fake_nvml.calls("nvmlDeviceGetComputeRunningProcesses_v3") == 0
    assert asleep.processes == () and asleep.total_bytes == first.total_bytes
    assert "runtime-suspended" in (asleep.message or "")
    (power / "runtime_status").write_text("active\n")
    awake = backend.sample().gpus[0]
    backend.close()
    assert fake_nvml.calls("nvmlDeviceGetMemoryInfo_v2") >= 1
    assert awake.message is None


def test_a_gpu_with_processes_is_queried_without_reading_its_power_state(
    fake_nvml: FakeNvml, tmp_path: Path
) -> None:
    """Something runs on it, so it is awake: at 10 Hz the sysfs power state is not read at all."""
    fake_nvml.write(H200.replace("\n", " bus=00000000:0A:00.0\n") + proc_line(4242, 2 * GiB, name="trainer"))
    backend = NvmlBackend(sysfs_root=tmp_path)
    backend.sample()
    power = tmp_path / "bus" / "pci" / "devices" / "0000:0a:00.0" / "power"
    power.mkdir(parents=True)
    (power / "runtime_status").write_text("suspended\n")  # stale or wrong: must not matter
    fake_nvml.reset_calls()
    busy = backend.sample().gpus[0]
    backend.close()
    assert fake_nvml.calls("nvmlDeviceGetMemoryInfo_v2") == 1
    assert [p.pid for p in busy.processes] == [4242]
