"""Seal throughput on a real GPU, against the references measured in the same run.

    PYTHONPATH=. python3 bench/seal_bench.py --out results/seal.json [--size-gib 16]

With the file in the page cache, one run measures:
- ours: file -> VRAM through the residency host, SHA-256 chunk digests included (VramSealed's seconds, and
  end to end from the command, host start included);
- safetensors.torch.load_file(device="cuda") on a safetensors file of the same size (what a user would
  otherwise use); if safetensors is missing, torch.from_file(...).cuda() instead, and it says so;
- pinned host-to-device bandwidth (CuPy, one stream): the ceiling;
- one core's sequential SHA-256 (why the digest is parallel).
Each GB/s has the CPU seconds it cost beside it (getrusage, children included). Prints ratios; writes JSON.
Needs: python3 with cupy, nvidia-ml-py, numpy, torch (safetensors optional). No tomlkit or platformdirs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GiB = 1 << 30
MiB = 1 << 20


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the residency host, once it has ended)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_data(path: Path, nbytes: int) -> None:
    block = bytearray(os.urandom(64 * MiB))
    with open(path, "wb") as f:
        for i in range(-(-nbytes // len(block))):
            block[:8] = i.to_bytes(8, "little")
            f.write(block[: min(len(block), nbytes - i * len(block))])
        f.flush()
        os.fsync(f.fileno())  # clean pages: the first variant must not pay for the writeback


def warm(path: Path) -> None:
    """Read the file once so it is in the page cache (the benchmark's premise)."""
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(64 * MiB)
        while f.readinto(buffer):
            pass


def measure_ours(path: Path, options: dict[str, Any], runs: int) -> dict[str, Any]:
    from app.core.gpu.nvml import NvmlBackend
    from app.core.residency.host.process import ProcessHostLauncher
    from app.core.residency.ledger import Ledgers
    from app.core.residency.manager import ResidencyManager
    from app.core.residency.seal import SealOptions
    from app.core.settings import ModelConfig, Settings

    backend = NvmlBackend()
    ledgers = Ledgers(headroom_bytes=lambda total: 2 * GiB)
    manager = ResidencyManager(
        Settings(models=(ModelConfig("bench", path, gpu=0),)),
        ledgers,
        ProcessHostLauncher(),
        measure_backend=backend,
        manifest_dir=Path(tempfile.mkdtemp(prefix="seal-bench-manifests-")),
        seal_options=SealOptions(**options),
        reply_timeout_s=600.0,
    )
    results = []
    try:
        for _ in range(runs):
            ledgers.observe_snapshot(backend.sample())
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            sealed = manager.load_blocking("bench", timeout_s=600)
            end_to_end = time.perf_counter() - t0
            assert sealed is not None
            manager.evict(["bench"], "bench")  # the host ends, so its CPU time lands in RUSAGE_CHILDREN
            results.append(
                {
                    "seal_seconds": sealed.seconds,
                    "seal_gb_per_s": sealed.bytes / sealed.seconds / 1e9,
                    "end_to_end_seconds": end_to_end,
                    "end_to_end_gb_per_s": sealed.bytes / end_to_end / 1e9,
                    "cpu_seconds": cpu_seconds() - cpu0,
                    "digest": sealed.digest,
                }
            )
    finally:
        manager.close()
        backend.close()
    best = max(results, key=lambda r: r["seal_gb_per_s"])
    return {"options": options, "runs": results, "best": best}


_TORCH_REFERENCE = r"""
import json, os, resource, sys, time
import torch
path, kind = sys.argv[1], sys.argv[2]
torch.zeros(1, device="cuda"); torch.cuda.synchronize()  # the CUDA context is not part of the load
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
c0, t0 = cpu(), time.perf_counter()
if kind == "safetensors":
    from safetensors.torch import load_file
    tensors = load_file(path, device="cuda")
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
else:
    t = torch.from_file(path, shared=False, size=os.path.getsize(path), dtype=torch.uint8).cuda()
    tensors = {"all": t}; nbytes = t.numel()
torch.cuda.synchronize()
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "gb_per_s": nbytes / seconds / 1e9, "cpu_seconds": cpu() - c0,
                  "bytes": nbytes}))
"""

_WRITE_SAFETENSORS = r"""
import sys, numpy as np, torch
from safetensors.torch import save_file
path, source, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
part = 256 * 1024 * 1024  # the same bytes as our model file, as 256 MiB tensors (a model's layers)
def layer(i):
    return torch.from_numpy(np.fromfile(source, np.uint8, min(part, nbytes - i * part), offset=i * part))
tensors = {f"layer{i}": layer(i) for i in range(-(-nbytes // part))}
save_file(tensors, path)
"""

_PINNED_CEILING = r"""
import json, resource, sys, time
import cupy as cp, numpy as np
nbytes, repeats = int(sys.argv[1]), int(sys.argv[2])
host = cp.cuda.alloc_pinned_memory(nbytes)
np.frombuffer(host, np.uint8, nbytes)[:] = 7
dev = cp.cuda.Memory(nbytes)
stream = cp.cuda.Stream(non_blocking=True)
def copy():
    cp.cuda.runtime.memcpyAsync(dev.ptr, host.ptr, nbytes, cp.cuda.runtime.memcpyHostToDevice, stream.ptr)
copy(); stream.synchronize()
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
for _ in range(repeats): copy()
stream.synchronize()
seconds = time.perf_counter() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
print(json.dumps({"gb_per_s": nbytes * repeats / seconds / 1e9, "cpu_seconds": cpu, "seconds": seconds}))
"""


def child_json(script: str, *args: str, timeout_s: float = 600) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip()[-2000:]}
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}  # type: ignore[no-any-return]


def measure_reference(data_path: Path, workdir: Path, nbytes: int, runs: int) -> dict[str, Any]:
    try:
        import safetensors  # noqa: F401

        kind = "safetensors"
    except ImportError:
        kind = "torch.from_file"
    if kind == "safetensors":
        path = workdir / "bench.safetensors"
        written = child_json(_WRITE_SAFETENSORS, str(path), str(data_path), str(nbytes))
        if "error" in written:
            return {"kind": kind, "error": written["error"]}
        os.sync()  # clean pages, as for our file
        warm(path)
    else:
        path = data_path
    runs_out = [child_json(_TORCH_REFERENCE, str(path), kind) for _ in range(runs)]
    if kind == "safetensors":
        path.unlink()
    good = [r for r in runs_out if "error" not in r]
    best = max(good, key=lambda r: r["gb_per_s"]) if good else None
    note = (
        None if kind == "safetensors" else "safetensors missing: torch.from_file(...).cuda() measured instead"
    )
    return {"kind": kind, "note": note, "runs": runs_out, "best": best}


def sha256_one_core(nbytes: int = 1 * GiB) -> dict[str, float]:
    data = os.urandom(64 * MiB) * (nbytes // (64 * MiB))
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    seconds = time.perf_counter() - t0
    return {"gb_per_s": len(data) / seconds / 1e9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--size-gib", type=float, default=16.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="the digest's chunk size")
    parser.add_argument(
        "--variants",
        default="0:gpu,4:gpu,0:gpu-mapped,0:cpu",
        help="reader_threads:where-hashed (reader_threads 0 = the default; gpu = the SHA-256 kernel, through "
        "pinned staging buffers (the default path), gpu-mapped = the same copied from a page-locked mapping "
        "of the file (SealOptions.map_files), cpu = the default hash threads, cpuN = N threads); the first "
        "is the default",
    )
    args = parser.parse_args()
    nbytes = int(args.size_gib * GiB)
    workdir = Path(tempfile.mkdtemp(prefix="seal-bench-", dir=args.dir))
    data = workdir / "model.bin"
    t0 = time.perf_counter()
    write_data(data, nbytes)
    warm(data)
    print(f"wrote and cached {nbytes / GiB:.1f} GiB in {time.perf_counter() - t0:.1f} s", flush=True)

    from app.core.residency.digest import default_hash_threads

    results: dict[str, Any] = {
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "bytes": nbytes,
        "default_hash_threads": default_hash_threads(),
    }
    try:
        results["gpu"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except OSError:
        results["gpu"] = None
    ours = []
    for variant in args.variants.split(","):
        readers_text, where = variant.split(":")
        readers = int(readers_text)
        hashers = int(where[3:] or 0) if where.startswith("cpu") else 0
        options = {
            "chunk_size_bytes": int(args.chunk_mib * MiB),
            "reader_threads": readers,
            "hash_threads": hashers,
            "device_digest": where.startswith("gpu"),
            "map_files": where == "gpu-mapped",
        }
        measured = measure_ours(data, options, args.runs)
        best = measured["best"]
        print(
            f"ours readers={readers or 'default'} hashed on {where}: {best['seal_gb_per_s']:.2f} GB/s "
            f"(end to end {best['end_to_end_gb_per_s']:.2f}), CPU {best['cpu_seconds']:.1f} s",
            flush=True,
        )
        ours.append(measured)
    results["ours"] = ours
    digests = {run["digest"] for o in ours for run in o["runs"]}
    results["digests_agree"] = len(digests) == 1
    print(f"every variant sealed the same digest: {len(digests) == 1}", flush=True)
    results["reference"] = reference = measure_reference(data, workdir, nbytes, args.runs)
    ref_best = reference.get("best")
    if ref_best:
        print(
            f"{reference['kind']}: {ref_best['gb_per_s']:.2f} GB/s, CPU {ref_best['cpu_seconds']:.1f} s",
            flush=True,
        )
    else:
        print(f"{reference['kind']}: failed: {reference}", flush=True)
    results["pinned_ceiling"] = ceiling = child_json(_PINNED_CEILING, str(1 * GiB), "8")
    print(f"pinned H2D ceiling: {ceiling.get('gb_per_s', 0):.2f} GB/s", flush=True)
    results["sha256_one_core"] = one = sha256_one_core()
    print(f"sha256, one core: {one['gb_per_s']:.2f} GB/s", flush=True)
    default = ours[0]["best"]
    top = max((o["best"] for o in ours), key=lambda r: r["seal_gb_per_s"])
    ratios: dict[str, float | None] = {
        "default_vs_reference": default["seal_gb_per_s"] / ref_best["gb_per_s"] if ref_best else None,
        "best_vs_reference": top["seal_gb_per_s"] / ref_best["gb_per_s"] if ref_best else None,
        "best_vs_ceiling": top["seal_gb_per_s"] / ceiling["gb_per_s"] if "gb_per_s" in ceiling else None,
    }
    results["ratios"] = ratios
    print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None), flush=True)
    data.unlink()
    workdir.rmdir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
