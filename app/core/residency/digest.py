"""Model digests: SHA-256 per fixed-size chunk, hashed in parallel threads, and the model digest = SHA-256
over the ordered chunk digests. The manifest keeps the chunk digests so that verify can name a damaged chunk.

One sequential SHA-256 runs at about 1.5 GB/s per core; chunks hash independently, and hashlib releases the
GIL for large buffers, so a thread pool scales with cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.core.atomic import write_atomic
from app.core.units import MiB

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CHUNK_SIZE_BYTES = 1 * MiB  # small enough for one GPU thread per chunk to hash at ~200 GB/s
MANIFEST_VERSION = 1


def chunk_digest(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of one chunk (releases the GIL while hashing large buffers)."""
    return hashlib.sha256(data).hexdigest()


def model_digest(chunk_digests: Iterable[str]) -> str:
    """SHA-256 over the ordered chunk digests (their raw 32 bytes, concatenated)."""
    outer = hashlib.sha256()
    for hex_digest in chunk_digests:
        outer.update(bytes.fromhex(hex_digest))
    return outer.hexdigest()


def chunk_count(total_bytes: int, chunk_size_bytes: int) -> int:
    return -(-total_bytes // chunk_size_bytes)


@dataclass(frozen=True)
class Manifest:
    """What a sealed model must hash to: its size, chunk size, each chunk's digest and the model digest."""

    chunk_size_bytes: int
    total_bytes: int
    chunk_digests: tuple[str, ...]
    digest: str

    @classmethod
    def from_chunk_digests(cls, chunk_size_bytes: int, total_bytes: int, chunks: Sequence[str]) -> Manifest:
        expected = chunk_count(total_bytes, chunk_size_bytes)
        if len(chunks) != expected:
            raise ValueError(f"{len(chunks)} chunk digests for {total_bytes} bytes; expected {expected}")
        return cls(chunk_size_bytes, total_bytes, tuple(chunks), model_digest(chunks))

    def damaged_chunks(self, chunk_digests: Sequence[str]) -> list[int]:
        """Indexes of chunks whose digest differs from this manifest (a missing chunk counts as damaged)."""
        damaged = [
            i for i, d in enumerate(self.chunk_digests) if i >= len(chunk_digests) or chunk_digests[i] != d
        ]
        return damaged

    def same_content_as(self, other: Manifest) -> bool | None:
        """True/False when comparable; None when the chunk sizes differ and the sizes match (cannot tell)."""
        if self.total_bytes != other.total_bytes:
            return False
        if self.chunk_size_bytes != other.chunk_size_bytes:
            return None
        return self.digest == other.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "chunk_size_bytes": self.chunk_size_bytes,
            "total_bytes": self.total_bytes,
            "chunk_digests": list(self.chunk_digests),
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        manifest = cls.from_chunk_digests(
            int(data["chunk_size_bytes"]), int(data["total_bytes"]), [str(d) for d in data["chunk_digests"]]
        )
        if manifest.digest != data.get("digest"):
            raise ValueError("the model digest does not match its chunk digests")
        return manifest


class ChunkHasher:
    """Hashes chunks in a thread pool; `submit` returns a Future of the chunk's hex digest.

    The caller must keep the buffer unchanged until the future is done (a staging buffer is reused only then).
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="chunk-hash")

    def submit(self, data: bytes | bytearray | memoryview) -> Future[str]:
        return self._pool.submit(chunk_digest, data)

    def submit_call(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` in the pool (e.g. hash all the chunks of one staging buffer)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def __enter__(self) -> ChunkHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_hash_threads() -> int:
    """Enough threads to keep up with a PCIe copy on a desktop, leaving cores for everything else."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ManifestStore:
    """The last manifest of each model: in memory, and as JSON files in a directory when one is given
    (the state dir), so a reload in a later run can say whether the file changed since last time."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._memory: dict[str, Manifest] = {}

    def path_for(self, model: str) -> Path | None:
        if self._directory is None:
            return None
        return self._directory / f"{_SAFE_NAME.sub('_', model)}.manifest.json"

    def load(self, model: str) -> Manifest | None:
        if model in self._memory:
            return self._memory[model]
        path = self.path_for(model)
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            manifest = Manifest.from_json(data["manifest"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the unreadable manifest %s: %s", path, exc)
            return None
        self._memory[model] = manifest
        return manifest

    def save(self, model: str, manifest: Manifest, *, source: str) -> None:
        self._memory[model] = manifest
        path = self.path_for(model)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"model": model, "source": source, "manifest": manifest.to_json()}, indent=1)
            write_atomic(path, text)
        except OSError as exc:  # a read-only state dir must not fail a seal
            logger.warning("could not save the manifest of %s to %s: %s", model, path, exc)
