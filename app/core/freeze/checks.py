"""Cheap checks the freezer makes before it freezes a process: each reads /proc, psutil or a telemetry
snapshot, never the driver, and takes well under a millisecond.

What they can and cannot see (the driver's own refusal is the backstop: a checkpoint that answers
CUDA_ERROR_NOT_SUPPORTED is a refusal, and the process is unlocked at once):
- host RAM (`host_ram`): exact for RAM available now plus free swap; it cannot know what else will take memory
  while the checkpoint runs, hence the margin.
- graphics (`uses_graphics`): exact as far as NVML reports it: a process in a GPU's graphics process list
  (OpenGL, Vulkan; a game, a compositor, a browser drawing on the GPU). The driver does not support
  checkpointing graphics contexts, so such a process is never frozen.
- managed (UVM) memory (`scan_maps`): a hint. Every CUDA process opens /dev/nvidia-uvm; managed allocations
  (cudaMallocManaged, `__managed__` variables) are CPU-accessible mappings of that device file, so readable
  and writable /dev/nvidia-uvm mappings larger than the few the CUDA runtime makes for itself suggest managed
  memory. A small managed allocation can pass unseen: the driver then refuses the checkpoint
  (CUDA_ERROR_NOT_SUPPORTED) and the freezer unlocks the process, which carries on.
- CUDA IPC: not detectable from outside. Legacy IPC handles (cudaIpcGetMemHandle, which PyTorch's
  multiprocessing uses) leave no file, descriptor or mapping that /proc shows. This matters: a frozen
  exporter's importer silently stops sharing, and a frozen importer cannot be restored (stuck). Only rules
  the user writes (or the app's known launch flags) can exclude such apps.
- another user's process (`belongs_to_other_user`): exact (real uids); the driver answers
  CUDA_ERROR_OPERATING_SYSTEM for it unless we are root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.core.gpu.snapshot import GpuSnapshot, ProcessKind, TelemetrySnapshot
from app.core.units import GiB, MiB, format_bytes

HOST_RAM_MARGIN_BYTES = 1 * GiB  # left to the rest of the system after the process's VRAM moved into RAM
UVM_DEVICE = "/dev/nvidia-uvm"
# Readable-and-writable /dev/nvidia-uvm mappings of a CUDA process that uses no managed memory stay below this
# (the runtime's own small mappings); above it, managed memory is likely.
MANAGED_HINT_BYTES = 32 * MiB


# ---- host RAM ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRamCheck:
    """Whether `needed_bytes` (the VRAM to move) fits in host memory: RAM available plus free swap, less a
    margin for everything else."""

    needed_bytes: int
    available_bytes: int  # psutil.virtual_memory().available
    swap_free_bytes: int  # psutil.swap_memory().free
    margin_bytes: int

    @property
    def room_bytes(self) -> int:
        return max(0, self.available_bytes + self.swap_free_bytes - self.margin_bytes)

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.room_bytes

    @property
    def reason(self) -> str | None:
        """Why it does not fit, for the user; None when it fits."""
        if self.fits:
            return None
        return (
            f"not enough host memory to freeze: {format_bytes(self.needed_bytes)} would move to RAM, "
            f"but only {format_bytes(self.room_bytes)} is free ({format_bytes(self.available_bytes)} RAM "
            f"available + {format_bytes(self.swap_free_bytes)} swap free, less "
            f"{format_bytes(self.margin_bytes)} kept for the system)"
        )


def _host_memory() -> tuple[int, int]:
    return int(psutil.virtual_memory().available), int(psutil.swap_memory().free)


def host_ram(
    needed_bytes: int,
    *,
    margin_bytes: int = HOST_RAM_MARGIN_BYTES,
    memory: Callable[[], tuple[int, int]] = _host_memory,
) -> HostRamCheck:
    """Check host RAM for a freeze that moves `needed_bytes` (for a group, the sum of its processes'
    VRAM). `memory` returns (available RAM, free swap) in bytes; psutil by default."""
    available, swap_free = memory()
    return HostRamCheck(max(0, needed_bytes), available, swap_free, margin_bytes)


# ---- graphics ----------------------------------------------------------------------------------------------


def _gpus(telemetry: TelemetrySnapshot | GpuSnapshot | Iterable[GpuSnapshot]) -> Iterable[GpuSnapshot]:
    if isinstance(telemetry, TelemetrySnapshot):
        return telemetry.gpus
    if isinstance(telemetry, GpuSnapshot):
        return (telemetry,)
    return telemetry


def uses_graphics(pid: int, telemetry: TelemetrySnapshot | GpuSnapshot | Iterable[GpuSnapshot]) -> bool:
    """Whether pid is in any GPU's graphics process list (kind graphics or both) in this snapshot."""
    for gpu in _gpus(telemetry):
        process = gpu.process(pid)
        if process is not None and process.kind in (ProcessKind.GRAPHICS, ProcessKind.BOTH):
            return True
    return False


# ---- managed memory (a hint from /proc/PID/maps) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapsHints:
    """What /proc/PID/maps says about a process's use of the NVIDIA device files."""

    readable: bool  # False: the maps could not be read (the process is gone, or another user's)
    uvm_mappings: int = 0  # mappings of /dev/nvidia-uvm
    uvm_rw_bytes: int = 0  # of those, bytes mapped readable and writable (CPU-accessible)

    @property
    def managed_memory(self) -> bool:
        """Managed (UVM) memory is likely: more CPU-accessible /dev/nvidia-uvm than the runtime's own."""
        return self.uvm_rw_bytes > MANAGED_HINT_BYTES

    @property
    def reason(self) -> str | None:
        """Why to refuse, for the user; None when nothing suggests managed memory."""
        if not self.managed_memory:
            return None
        return (
            f"it seems to use CUDA managed memory ({format_bytes(self.uvm_rw_bytes)} of {UVM_DEVICE} "
            "mapped), which the driver cannot freeze"
        )


def scan_maps(text: str) -> MapsHints:
    """Read the text of a /proc/PID/maps file (`start-end perms offset dev inode path` per line)."""
    count = 0
    rw_bytes = 0
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5].strip() != UVM_DEVICE:
            continue
        count += 1
        start, _, end = fields[0].partition("-")
        try:
            size = int(end, 16) - int(start, 16)
        except ValueError:
            continue
        if fields[1].startswith("rw"):
            rw_bytes += max(0, size)
    return MapsHints(True, count, rw_bytes)


def maps_hints(pid: int, *, proc_root: Path = Path("/proc")) -> MapsHints:
    """scan_maps of /proc/PID/maps; MapsHints(readable=False) when it cannot be read."""
    try:
        text = (proc_root / str(pid) / "maps").read_text(errors="replace")
    except OSError:
        return MapsHints(False)
    return scan_maps(text)


# ---- other users -------------------------------------------------------------------------------------------


def owner_uid(pid: int) -> int:
    """The real uid of pid's owner. Raises ProcessLookupError when there is no such process."""
    try:
        return int(psutil.Process(pid).uids().real)
    except psutil.NoSuchProcess as exc:
        raise ProcessLookupError(f"no process {pid}") from exc
    except psutil.Error as exc:  # AccessDenied: /proc/PID/status is readable to all on Linux, but be safe
        raise ProcessLookupError(f"cannot read the owner of process {pid}: {exc}") from exc


def belongs_to_other_user(pid: int) -> bool:
    """Whether pid runs as another user than this process (real uids). Raises ProcessLookupError for a
    process that does not exist."""
    return owner_uid(pid) != os.getuid()


def needs_privilege(pid: int) -> bool:
    """Whether freezing pid needs root (or the privileged helper): another user's process while we are not
    root. The driver answers CUDA_ERROR_OPERATING_SYSTEM otherwise. Raises ProcessLookupError for a process
    that does not exist."""
    return belongs_to_other_user(pid) and os.geteuid() != 0


# ---- all of them for one process ------------------------------------------------------------------------


def process_refusal(
    pid: int,
    telemetry: TelemetrySnapshot | GpuSnapshot | Iterable[GpuSnapshot],
    *,
    proc_root: Path = Path("/proc"),
) -> str | None:
    """The first reason not to freeze pid, for the user (graphics, another user's process without the
    privilege, signs of managed memory), or None. Host RAM is checked for the whole group (`host_ram`)."""
    gpus = tuple(_gpus(telemetry))
    if uses_graphics(pid, gpus):
        return "it draws graphics on the GPU, and the driver cannot freeze graphics (a game, a desktop app)"
    try:
        if needs_privilege(pid):
            return "it belongs to another user; freezing it needs the privileged helper"
    except ProcessLookupError:
        return "the process is gone"
    return maps_hints(pid, proc_root=proc_root).reason
