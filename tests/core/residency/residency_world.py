"""A small simulated world for residency tests: a SimulatedBackend GPU, its ledger, and a ResidencyManager
whose hosts run the real serve loop in threads (SimulatedDevice) over real pipes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import ModelConfig, Settings
from app.core.events import AuditLog, Event
from app.core.gpu.scenario import parse_scenario
from app.core.gpu.simulated import ManualClock, SimulatedBackend
from app.core.residency.host.process import ThreadHostLauncher
from app.core.residency.ledger import Ledgers
from app.core.residency.manager import ResidencyManager
from app.core.residency.seal import Device, SealOptions
from app.core.residency.simulated_device import SimulatedDevice
from app.core.units import KiB, MiB

CHUNK = 64 * KiB  # small chunks so a few MiB make many of them
STAGING = 2 * CHUNK  # each staging buffer holds two chunks
SEGMENT = 256 * KiB  # device memory in blocks of 4 chunks: a seal allocates several times
SEAL_OPTIONS = SealOptions(
    chunk_size_bytes=CHUNK,
    staging_bytes=STAGING,
    segment_bytes=SEGMENT,
    staging_buffers=3,
    reader_threads=2,
    hash_threads=2,
)


def scenario_text(total: str = "64 MiB", foreign: str = "0 B", timeline: str = "") -> str:
    processes = ""
    if foreign != "0 B":
        processes = f'[[processes]]\npid = 777\nname = "blender"\ngpu = 0\nused = "{foreign}"\n'
    return (
        f'[[gpus]]\nindex = 0\nname = "Sim GPU"\nuuid = "GPU-sim-0"\ntotal = "{total}"\n{processes}{timeline}'
    )


def write_model(path: Path, nbytes: int, seed: int = 1) -> bytes:
    """A file of `nbytes` pseudo-random bytes (different per seed), returned for independent checks."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    data = (block * (nbytes // len(block) + 1))[:nbytes]
    data = bytes(b ^ (i % 251) for i, b in enumerate(data[:4096])) + data[4096:]  # no period at the start
    path.write_bytes(data)
    return data


def expected_chunks(data: bytes, chunk: int = CHUNK) -> list[str]:
    return [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]


def expected_digest(data: bytes, chunk: int = CHUNK) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(d) for d in expected_chunks(data, chunk))).hexdigest()


@dataclass
class World:
    backend: SimulatedBackend
    clock: ManualClock
    ledgers: Ledgers
    manager: ResidencyManager
    audit: AuditLog
    events: list[Event] = field(default_factory=list)
    devices: list[SimulatedDevice] = field(default_factory=list)

    def observe(self) -> None:
        """One NVML-like sample into the ledger (the engine does this every tick)."""
        self.clock.advance(0.1)
        self.ledgers.observe_snapshot(self.backend.sample())

    def ours(self) -> int:
        return self.backend.our_bytes(0)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def make_world(
    tmp_path: Path,
    models: Sequence[tuple[str, Path]],
    *,
    total: str = "64 MiB",
    foreign: str = "0 B",
    timeline: str = "",
    wrap_device: Callable[[SimulatedDevice, World], Device] | None = None,
    manifest_dir: Path | None = None,
    device_digest: bool = False,
) -> World:
    clock = ManualClock()
    backend = SimulatedBackend(parse_scenario(scenario_text(total, foreign, timeline)), clock=clock)
    ledgers = Ledgers(headroom_bytes=lambda _total: 1 * MiB, clock=clock)
    settings = Settings(models=tuple(ModelConfig(name=n, path=p, gpu=0) for n, p in models))
    audit = AuditLog(tmp_path / "audit.jsonl")
    holder: list[World] = []

    def device(gpu: int, pid: int) -> Device:
        sim = SimulatedDevice(gpu, backend=backend, pid=pid, device_digest=device_digest)
        holder[0].devices.append(sim)
        return sim if wrap_device is None else wrap_device(sim, holder[0])

    launcher = ThreadHostLauncher(device)
    manager = ResidencyManager(
        settings,
        ledgers,
        launcher,
        clock=time.monotonic,
        event_sink=lambda e: holder[0].events.append(e),
        audit_log=audit,
        measure_backend=backend,
        manifest_dir=manifest_dir if manifest_dir is not None else tmp_path / "manifests",
        seal_options=SEAL_OPTIONS,
        reply_timeout_s=10.0,
        confirm_timeout_s=0.5,
    )
    world = World(backend, clock, ledgers, manager, audit)
    holder.append(world)
    world.observe()
    return world


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()
