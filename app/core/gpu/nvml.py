"""NvmlBackend: GPU telemetry from NVIDIA's NVML through nvidia-ml-py (module `pynvml`).

The only module of the project that imports pynvml. `sample()` never raises: every NVML error becomes a
typed state in the snapshot (no driver, driver updated under us, no permission, a GPU lost, a GPU failing)
with a message that says what to do. Old drivers are met with fallbacks (memory v2 -> v1, process lists
v3 -> v2 -> v1); the variant that works is remembered per GPU, so a missing function is asked once, not
every 100 ms. A GPU (or NVML as a whole) that fails is retried with exponential backoff on the injected
clock; while it backs off, sample() repeats its last state without calling NVML for it.

Each getter's docstring names its nvidia-smi equivalent, so a user can cross-check what we report.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pynvml

from app.core.backoff import Backoff
from app.core.gpu.snapshot import (
    BackendState,
    GpuProcess,
    GpuSnapshot,
    GpuState,
    ProcessKind,
    TelemetrySnapshot,
)

try:  # process names when NVML cannot give them; optional so app.core runs without it
    import psutil
except ImportError:  # pragma: no cover - psutil is a dependency, but a missing one must not stop telemetry
    psutil = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SENSOR_INTERVAL_S = 1.0  # temperature and utilization are read at most this often
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 60.0

NOT_AVAILABLE = 0xFFFF_FFFF_FFFF_FFFF  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long

RESERVED_V1_REASON = "the driver has no NVML memory v2, so used_bytes includes the driver-reserved memory"
USED_NA_REASON = "NVML reports this process's memory as not available (as under Windows WDDM)"

# Errors that mean NVML as a whole is gone, not one GPU: shut down and start again (with backoff).
_BACKEND_ERRORS = frozenset(
    {
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
    }
)
# "This driver or GPU cannot tell": a fact to report as None with a reason, not an error to count.
_UNSUPPORTED = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})


class _NvmlGone(Exception):
    """A per-GPU query hit an error that means NVML as a whole stopped working."""

    def __init__(self, error: pynvml.NVMLError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Device:
    """What we keep between samples for one watched GPU."""

    index: int
    backoff: Backoff
    handle: Any = None
    name: str | None = None
    uuid: str | None = None
    total_bytes: int | None = None
    memory_v2: bool = True  # False once v2 turned out to be missing: ask v1 only
    process_variant: dict[ProcessKind, int] = field(default_factory=dict)  # index into _PROCESS_CHAINS
    unsupported: dict[str, str] = field(default_factory=dict)  # field -> reason, never asked again
    last: GpuSnapshot | None = None
    sensors: dict[str, tuple[float, int | str]] = field(default_factory=dict)  # field -> (asked at, value)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def sysfs_bus_id(nvml_bus_id: str) -> str | None:
    """NVML's "00000000:01:00.0" (8-digit domain, upper case) as sysfs names it: "0000:01:00.0"."""
    parts = nvml_bus_id.strip().split(":")
    if len(parts) != 3:
        return None
    domain, bus, device_function = parts
    try:
        return f"{int(domain, 16):04x}:{bus.lower()}:{device_function.lower()}"
    except ValueError:
        return None


class _ProcessInfoV1(ctypes.Structure):
    """nvmlProcessInfo_v1_t (drivers before R470): pid and usedGpuMemory only."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def _processes_v1(function_name: str, handle: Any) -> list[Any]:
    """The original process-list call that nvidia-ml-py no longer wraps (its plain name now means v3).
    Same two-call protocol: ask the count, then fill an oversized array."""
    fn = pynvml._nvmlGetFunctionPointer(function_name)
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == pynvml.NVML_SUCCESS:
        return []
    if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
        raise pynvml.NVMLError(ret)
    count.value = count.value * 2 + 5
    infos = (_ProcessInfoV1 * count.value)()
    ret = fn(handle, ctypes.byref(count), infos)
    if ret != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(ret)
    return [infos[i] for i in range(count.value)]


def _chain(*names: str) -> tuple[tuple[str, Callable[[Any], list[Any]]], ...]:
    """The process-list variants this nvidia-ml-py has, newest first; the last is our own v1 call."""
    chain: list[tuple[str, Callable[[Any], list[Any]]]] = []
    for name in names[:-1]:
        function = getattr(pynvml, name, None)
        if function is not None:
            chain.append((name, function))
    v1 = names[-1]
    chain.append((v1, lambda handle: _processes_v1(v1, handle)))
    return tuple(chain)


_PROCESS_CHAINS = {
    ProcessKind.COMPUTE: _chain(
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses",
    ),
    ProcessKind.GRAPHICS: _chain(
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses",
    ),
}


def _init_failure(error: BaseException) -> tuple[BackendState, str]:
    """The state and the message for people when NVML cannot start (or stops) as a whole."""
    code = getattr(error, "value", None)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return BackendState.NO_DRIVER, (
            "NVIDIA driver not found (libnvidia-ml.so.1 cannot be loaded). Install the NVIDIA driver "
            "(`nvidia-smi` should list your GPU), or use --simulate SCENARIO to try the app."
        )
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return BackendState.NO_DRIVER, (
            "NVIDIA driver not found (the nvidia kernel module is not loaded). Load it (`sudo modprobe "
            "nvidia`) or reboot; `nvidia-smi` should then list your GPU."
        )
    if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return BackendState.DRIVER_MISMATCH, (
            "Driver/library version mismatch: the NVIDIA driver was updated while it was running. "
            "Restart VRAM Steward; if `nvidia-smi` reports the same mismatch, reboot."
        )
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return BackendState.NO_PERMISSION, (
            "No permission to use the NVIDIA driver (NVML: Insufficient Permissions). Make sure your user "
            "can open /dev/nvidiactl and /dev/nvidia0 (often the `video` group), or give the container "
            "access to the GPU."
        )
    return BackendState.ERROR, f"NVML does not work: {error}. Retrying with backoff; see the log for details."


class NvmlBackend:
    """Telemetry from NVML (`nvidia-smi` reads the same library). Implements GpuBackend.

    `gpu_indices` limits the GPUs watched (None: all). `sysfs_root` exists for tests of
    `is_runtime_suspended`. `query_errors_total` counts NVML errors (the nvml_query_errors_total metric).
    """

    name = "nvml"

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        gpu_indices: Sequence[int] | None = None,
        *,
        sysfs_root: Path = Path("/sys"),
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._clock = clock
        self._wanted = None if gpu_indices is None else tuple(sorted(set(gpu_indices)))
        self._sysfs_root = sysfs_root
        self._backoff_s = (backoff_initial_s, backoff_max_s)
        self._init_backoff = self._new_backoff()
        self._initialized = False
        self._closed = False
        self._sample_lock = threading.Lock()
        self._devices: list[_Device] = []
        self._absent: list[int] = []  # wanted indices that NVML does not have
        self._device_count = 0
        self._driver_version: str | None = None
        self._last_failure: TelemetrySnapshot | None = None
        self._names: dict[int, str] = {}
        self._bus_ids: dict[int, str] = {}  # GPU index -> sysfs bus id, kept across restarts of NVML
        self.query_errors_total = 0

    def _new_backoff(self) -> Backoff:
        first_s, max_s = self._backoff_s
        return Backoff(first_s=first_s, max_s=max_s, clock=self._clock)

    # ---- the GpuBackend protocol -------------------------------------------------------------------

    def sample(self) -> TelemetrySnapshot:
        """One look at every watched GPU. `nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,
        memory.free,memory.reserved,temperature.gpu,utilization.gpu` plus `--query-compute-apps` and the
        graphics processes of plain `nvidia-smi`."""
        now = self._clock()
        if self._closed:
            return TelemetrySnapshot(
                self.name, BackendState.ERROR, now, message="The NVML backend is closed."
            )
        try:
            with self._sample_lock:  # the engine and a holder's own thread (verifying a free) may both ask
                return self._sample(now)
        except Exception as exc:  # never raise from sample(): a bug here must not stop the worker thread
            logger.exception("NVML sample failed unexpectedly")
            self.query_errors_total += 1
            return TelemetrySnapshot(
                self.name, BackendState.ERROR, now, message=f"Reading the GPU failed unexpectedly: {exc!r}"
            )

    def probe(self) -> tuple[object, ...] | None:
        """Each watched GPU's used memory (`nvidia-smi --query-gpu=memory.used`): one NVML call per GPU,
        a few µs, against the ~90 µs of a full sample with its process lists. Any allocation or free on a
        GPU moves it. A GPU that is backing off, failed or runtime-suspended is not asked (its entry is
        its state); None when NVML is not running or a call fails (the full sample then says why)."""
        if self._closed or not self._initialized:
            return None
        out: list[object] = []
        try:
            for device in self._devices:
                last = device.last
                if (
                    last is None
                    or device.handle is None
                    or last.state != GpuState.OK
                    or not device.backoff.ready()
                    or (not last.processes and self.is_runtime_suspended(device.index))
                ):
                    out.append(None if last is None else last.state)
                elif device.memory_v2:
                    out.append(
                        pynvml.nvmlDeviceGetMemoryInfo(device.handle, version=pynvml.nvmlMemory_v2).used
                    )
                else:
                    out.append(pynvml.nvmlDeviceGetMemoryInfo(device.handle).used)
        except pynvml.NVMLError:
            return None
        return tuple(out)

    def close(self) -> None:
        """Shut NVML down (nvmlShutdown). Safe to call twice."""
        self._shutdown()
        self._closed = True

    # ---- power ---------------------------------------------------------------------------------------

    def is_runtime_suspended(self, index: int) -> bool | None:
        """Whether GPU `index` sleeps in PCI runtime power management (a laptop's dGPU, RTD3).

        Reads /sys/bus/pci/devices/<bus id>/power/runtime_status, which never wakes the GPU, whereas any
        NVML query (and `nvidia-smi`) does. So the policy can skip sampling a sleeping GPU that holds none
        of our models. The bus id comes from nvmlDeviceGetPciInfo (`nvidia-smi --query-gpu=pci.bus_id`),
        learned at the first sample. True for "suspended"/"suspending", False when active (or runtime PM is
        off), None when unknown (no sample yet, not Linux, or no such file).
        """
        bus_id = self._bus_ids.get(index)
        if bus_id is None:
            return None
        path = self._sysfs_root / "bus" / "pci" / "devices" / bus_id / "power" / "runtime_status"
        try:
            status = path.read_text().strip()
        except OSError:
            return None
        return status in ("suspended", "suspending")

    # ---- NVML as a whole -------------------------------------------------------------------------

    def _sample(self, now: float) -> TelemetrySnapshot:
        if not self._initialized:
            if not self._init_backoff.ready() and self._last_failure is not None:
                return dataclasses.replace(self._last_failure, taken_at=now)
            failure = self._start(now)
            if failure is not None:
                return failure
        gpus: list[GpuSnapshot] = []
        try:
            for device in self._devices:
                gpus.append(self._sample_device(device))
        except _NvmlGone as gone:
            self._shutdown()
            return self._failed(gone.error, now)
        gpus.extend(self._absent_gpu(index) for index in self._absent)
        gpus.sort(key=lambda gpu: gpu.index)
        seen = {process.pid for gpu in gpus for process in gpu.processes}
        self._names = {pid: name for pid, name in self._names.items() if pid in seen}
        return TelemetrySnapshot(
            self.name, BackendState.OK, now, gpus=tuple(gpus), driver_version=self._driver_version
        )

    def _start(self, now: float) -> TelemetrySnapshot | None:
        """nvmlInit, the driver version (`nvidia-smi --query-gpu=driver_version`) and the GPU count
        (`nvidia-smi --list-gpus`). Returns a failure snapshot, or None when NVML runs."""
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return self._failed(error, now)
        self._initialized = True
        try:
            self._driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
            self._device_count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as error:
            self._shutdown()
            return self._failed(error, now)
        present = range(self._device_count)
        wanted = present if self._wanted is None else self._wanted
        self._devices = [_Device(index, self._new_backoff()) for index in wanted if index in present]
        self._absent = [index for index in wanted if index not in present]
        if self._init_backoff.failures:
            logger.info("NVML answers again after %d failed attempts", self._init_backoff.failures)
        self._init_backoff.succeeded()
        self._last_failure = None
        logger.info("NVML started: driver %s, %d GPU(s)", self._driver_version, self._device_count)
        if self._absent:
            logger.warning("GPU(s) %s not found: NVML lists %d GPU(s)", self._absent, self._device_count)
        return None

    def _failed(self, error: pynvml.NVMLError, now: float) -> TelemetrySnapshot:
        self.query_errors_total += 1
        state, message = _init_failure(error)
        delay_s = self._init_backoff.failed()
        # no driver at all is a normal state (a machine without an NVIDIA GPU): the callers say it to people
        first = logger.info if state == BackendState.NO_DRIVER else logger.warning
        log = first if self._init_backoff.failures == 1 else logger.debug
        log("NVML unavailable (%s); next attempt in %.1f s: %s", error, delay_s, message)
        self._last_failure = TelemetrySnapshot(self.name, state, now, message=message)
        return self._last_failure

    def _shutdown(self) -> None:
        if not self._initialized:
            return
        self._initialized = False
        self._devices = []
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            logger.debug("nvmlShutdown: %s", error)

    # ---- one GPU -----------------------------------------------------------------------------------

    def _sample_device(self, device: _Device) -> GpuSnapshot:
        if not device.backoff.ready() and device.last is not None:
            return device.last  # backing off: the last state, without asking NVML
        try:
            snapshot = self._query_device(device)
        except pynvml.NVMLError as error:
            if error.value in _BACKEND_ERRORS:
                raise _NvmlGone(error) from error
            return self._device_failed(device, error)
        if device.backoff.failures:
            logger.info(
                "GPU %d answers again after %d failed attempts", device.index, device.backoff.failures
            )
        device.backoff.succeeded()
        device.last = snapshot
        return snapshot

    def _device_failed(self, device: _Device, error: pynvml.NVMLError) -> GpuSnapshot:
        self.query_errors_total += 1
        device.handle = None  # ask for a fresh handle next time (after a GPU reset the old one is stale)
        delay_s = device.backoff.failed()
        label = f"GPU {device.index}" + (f" ({device.name})" if device.name else "")
        if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
            state = GpuState.LOST
            message = (
                f"{label} has fallen off the bus (NVML: GPU is lost). Its memory cannot be used until "
                "the GPU is reset (`nvidia-smi -r`) or the machine is rebooted; `dmesg` shows the Xid error."
            )
        else:
            state = GpuState.ERROR
            message = f"{label} does not answer NVML queries ({error}); retrying in {delay_s:.1f} s."
        log = logger.warning if device.backoff.failures == 1 else logger.debug
        log("%s", message)
        unavailable = tuple((name, message) for name in ("used_bytes", "free_bytes", "reserved_bytes"))
        device.last = GpuSnapshot(
            index=device.index,
            name=device.name or f"GPU {device.index}",
            uuid=device.uuid or "",
            total_bytes=device.total_bytes or 0,
            used_bytes=0,
            free_bytes=0,  # nothing can be admitted on a GPU that does not answer
            reserved_bytes=None,
            temperature_c=None,
            utilization_percent=None,
            state=state,
            message=message,
            unavailable=unavailable,
        )
        return device.last

    @staticmethod
    def _suspended(device: _Device, last: GpuSnapshot) -> GpuSnapshot:
        """A GPU asleep in runtime power management (a laptop's dGPU) is not queried, since any NVML call
        wakes it. Nothing runs on a sleeping GPU: no processes, and its memory is free but for what the
        driver reserves."""
        reserved = last.reserved_bytes or 0
        return replace(
            last,
            used_bytes=0,
            free_bytes=max(last.total_bytes - reserved, 0),
            processes=(),
            utilization_percent=None,
            temperature_c=None,
            message="runtime-suspended: not polled, so that it can stay asleep",
            unavailable=(
                ("temperature_c", "the GPU is runtime-suspended (reading it would wake it)"),
                ("utilization_percent", "the GPU is runtime-suspended (reading it would wake it)"),
            ),
        )

    def _absent_gpu(self, index: int) -> GpuSnapshot:
        last = self._device_count - 1
        listed = f"indices 0-{last}" if last > 0 else ("index 0" if last == 0 else "none")
        message = (
            f"GPU {index} not found: NVML lists {self._device_count} GPU(s) ({listed}). "
            "Check gpu_device and the models' gpu in the config file."
        )
        return GpuSnapshot(
            index=index,
            name=f"GPU {index}",
            uuid="",
            total_bytes=0,
            used_bytes=0,
            free_bytes=0,
            reserved_bytes=None,
            temperature_c=None,
            utilization_percent=None,
            state=GpuState.ERROR,
            message=message,
        )

    def _query_device(self, device: _Device) -> GpuSnapshot:
        # A GPU with processes on it is awake: only an idle one can be runtime-suspended (sysfs read skipped
        # at 10 Hz while we hold VRAM).
        last = device.last
        if (
            last is not None
            and not last.processes
            and device.handle is not None
            and self.is_runtime_suspended(device.index)
        ):
            return self._suspended(device, last)
        if device.handle is None:
            device.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index)
            device.name = _text(pynvml.nvmlDeviceGetName(device.handle))
            device.uuid = _text(pynvml.nvmlDeviceGetUUID(device.handle))
            self._learn_bus_id(device)
        handle = device.handle
        total, used, free, reserved = self._memory(device)
        device.total_bytes = total
        unavailable: list[tuple[str, str]] = []
        if reserved is None:
            unavailable.append(("reserved_bytes", RESERVED_V1_REASON))
        temperature = self._optional(
            device,
            "temperature_c",
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        )
        utilization = self._optional(
            device, "utilization_percent", lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        )
        for field_name, value in (("temperature_c", temperature), ("utilization_percent", utilization)):
            if isinstance(value, str):
                unavailable.append((field_name, value))
        processes = self._processes(device)
        if isinstance(processes, str):
            unavailable.append(("processes", processes))
            processes = ()
        return GpuSnapshot(
            index=device.index,
            name=device.name or f"GPU {device.index}",
            uuid=device.uuid or "",
            total_bytes=total,
            used_bytes=used,
            free_bytes=free,
            reserved_bytes=reserved,
            temperature_c=temperature if isinstance(temperature, int) else None,
            utilization_percent=utilization if isinstance(utilization, int) else None,
            processes=processes,
            unavailable=tuple(unavailable),
        )

    def _learn_bus_id(self, device: _Device) -> None:
        """`nvidia-smi --query-gpu=pci.bus_id`; kept for is_runtime_suspended()."""
        try:
            pci = pynvml.nvmlDeviceGetPciInfo(device.handle)
        except pynvml.NVMLError as error:
            if error.value in _BACKEND_ERRORS or error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise
            logger.debug("GPU %d: no PCI bus id (%s)", device.index, error)
            return
        bus_id = sysfs_bus_id(_text(pci.busId))
        if bus_id is not None:
            self._bus_ids[device.index] = bus_id

    def _memory(self, device: _Device) -> tuple[int, int, int, int | None]:
        """(total, used, free, reserved) bytes: `nvidia-smi --query-gpu=memory.total,memory.used,memory.free,
        memory.reserved`. NVML memory v2 counts driver-reserved memory apart; v1 (old drivers) folds it
        into used, and reserved is None."""
        if device.memory_v2:
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(device.handle, version=pynvml.nvmlMemory_v2)
                return int(memory.total), int(memory.used), int(memory.free), int(memory.reserved)
            except pynvml.NVMLError as error:
                if error.value not in (*_UNSUPPORTED, pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
                    raise
                device.memory_v2 = False
                logger.info("GPU %d: NVML memory v2 unavailable (%s); using v1", device.index, error)
        memory = pynvml.nvmlDeviceGetMemoryInfo(device.handle)
        return int(memory.total), int(memory.used), int(memory.free), None

    def _optional(self, device: _Device, field_name: str, query: Callable[[], Any]) -> int | str:
        """A value that some GPUs cannot give: the int, or the reason why not (as str). "Not supported"
        is remembered and not asked again; other errors are counted and asked again next sample."""
        if field_name in device.unsupported:
            return device.unsupported[field_name]
        cached = device.sensors.get(field_name)
        now = self._clock()
        if cached is not None and now - cached[0] < SENSOR_INTERVAL_S and isinstance(cached[1], int):
            return cached[1]  # temperature and utilization change slowly: not worth an NVML call at 10 Hz
        try:
            value = int(query())
            device.sensors[field_name] = (now, value)
            return value
        except pynvml.NVMLError as error:
            if error.value in _BACKEND_ERRORS or error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise
            if error.value in _UNSUPPORTED:
                reason = f"not supported by this GPU or driver (NVML: {error})"
                device.unsupported[field_name] = reason
                return reason
            self.query_errors_total += 1
            return f"NVML query failed: {error}"

    def _processes(self, device: _Device) -> tuple[GpuProcess, ...] | str:
        """`nvidia-smi --query-compute-apps=pid,process_name,used_memory` and the graphics (type G)
        processes of plain `nvidia-smi`, merged by pid: a pid in both lists is ProcessKind.BOTH."""
        merged: dict[int, tuple[ProcessKind, int | None, bool]] = {}  # pid -> kind, used, used known
        for kind in (ProcessKind.COMPUTE, ProcessKind.GRAPHICS):
            listed = self._process_list(device, kind)
            if isinstance(listed, str):
                return listed
            for pid, used in listed.items():
                if pid in merged:
                    before_kind, before_used, _ = merged[pid]
                    # The same process's memory appears in both lists: take it once, not twice.
                    known = [u for u in (before_used, used) if u is not None]
                    merged[pid] = (before_kind.merge(kind), max(known) if known else None, bool(known))
                else:
                    merged[pid] = (kind, used, used is not None)
        return tuple(
            GpuProcess(
                pid=pid,
                name=self._process_name(pid),
                used_bytes=used,
                kind=kind,
                used_unavailable_reason=None if known else USED_NA_REASON,
            )
            for pid, (kind, used, known) in sorted(merged.items())
        )

    def _process_list(self, device: _Device, kind: ProcessKind) -> dict[int, int | None] | str:
        """pid -> used bytes (None: not available) from the newest process-list call this driver has."""
        chain = _PROCESS_CHAINS[kind]
        start = device.process_variant.get(kind, 0)
        for position in range(start, len(chain)):
            function_name, function = chain[position]
            try:
                entries = self._call_sized(function, device.handle)
            except pynvml.NVMLError as error:
                if error.value == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                    logger.info(
                        "GPU %d: %s missing (%s); trying an older one", device.index, function_name, error
                    )
                    continue
                if error.value in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION):
                    device.process_variant[kind] = position
                    return f"NVML cannot list {kind} processes here ({error})"
                raise
            if device.process_variant.get(kind) != position:
                device.process_variant[kind] = position
                logger.debug("GPU %d: %s processes via %s", device.index, kind, function_name)
            return _used_by_pid(entries)
        device.process_variant[kind] = len(chain)
        return f"this NVIDIA driver has no call that lists {kind} processes"

    @staticmethod
    def _call_sized(function: Callable[[Any], list[Any]], handle: Any) -> list[Any]:
        """A two-call list query; asked again once when processes appeared between its two calls."""
        try:
            return function(handle)
        except pynvml.NVMLError as error:
            if error.value != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
                raise
            return function(handle)

    def _process_name(self, pid: int) -> str:
        """`nvidia-smi --query-compute-apps=process_name`: NVML's name, else psutil's, else "pid N".
        In a container NVML gives host pids, which psutil may not see."""
        name = self._names.get(pid)
        if name is not None:
            return name
        try:
            name = _text(pynvml.nvmlSystemGetProcessName(pid)).strip() or None
        except pynvml.NVMLError as error:
            logger.debug("nvmlSystemGetProcessName(%d): %s", pid, error)
        if name is None and psutil is not None:
            with contextlib.suppress(psutil.Error):
                name = psutil.Process(pid).name() or None
        name = name or f"pid {pid}"
        self._names[pid] = name
        return name


def _used_by_pid(entries: Iterable[Any]) -> dict[int, int | None]:
    """Sum per pid within one list (under MIG a process has one entry per instance it uses)."""
    used: dict[int, int | None] = {}
    for entry in entries:
        pid = int(entry.pid)
        value = entry.usedGpuMemory
        amount = None if value is None or int(value) == NOT_AVAILABLE else int(value)
        if pid not in used:
            used[pid] = amount
        else:
            before = used[pid]
            used[pid] = None if before is None or amount is None else before + amount
    return used
