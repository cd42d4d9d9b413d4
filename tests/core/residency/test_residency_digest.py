"""Digests and manifests against an independent hashlib computation."""

from __future__ import annotations

import hashlib
import json

import pytest

from app.core.residency.digest import ChunkHasher, Manifest, ManifestStore, chunk_count, model_digest


def test_manifest_matches_an_independent_sha256_of_each_chunk() -> None:
    data = bytes(range(256)) * 1000 + b"tail"
    chunk = 4096
    chunks = [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]
    with ChunkHasher(threads=3) as hasher:
        futures = [hasher.submit(memoryview(data)[i : i + chunk]) for i in range(0, len(data), chunk)]
        got = [f.result() for f in futures]
    assert got == chunks
    manifest = Manifest.from_chunk_digests(chunk, len(data), got)
    outer = hashlib.sha256(b"".join(bytes.fromhex(c) for c in chunks)).hexdigest()
    assert manifest.digest == outer == model_digest(chunks)
    assert chunk_count(len(data), chunk) == len(chunks) == 63


def test_damaged_chunks_are_named_and_a_wrong_count_is_refused() -> None:
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    manifest = Manifest.from_chunk_digests(10, 45, digests)
    bad = list(digests)
    bad[3] = hashlib.sha256(b"x").hexdigest()
    assert manifest.damaged_chunks(bad) == [3]
    assert manifest.damaged_chunks(digests[:4]) == [4]
    assert manifest.damaged_chunks(digests) == []
    with pytest.raises(ValueError, match="expected 5"):
        Manifest.from_chunk_digests(10, 45, digests[:4])


def test_same_content_compares_only_like_with_like() -> None:
    a = Manifest.from_chunk_digests(10, 20, ["00" * 32, "11" * 32])
    b = Manifest.from_chunk_digests(10, 20, ["00" * 32, "22" * 32])
    c = Manifest.from_chunk_digests(20, 20, ["33" * 32])
    assert a.same_content_as(a) is True
    assert a.same_content_as(b) is False
    assert a.same_content_as(c) is None
    assert a.same_content_as(Manifest.from_chunk_digests(10, 19, ["00" * 32, "11" * 32])) is False


def test_manifest_store_persists_across_instances_and_ignores_corrupt_files(tmp_path) -> None:
    manifest = Manifest.from_chunk_digests(10, 15, ["aa" * 32, "bb" * 32])
    ManifestStore(tmp_path).save("llama 3/8b", manifest, source="/models/x.gguf")
    again = ManifestStore(tmp_path)
    assert again.load("llama 3/8b") == manifest
    path = again.path_for("llama 3/8b")
    assert path is not None and path.parent == tmp_path and "/" not in path.name
    data = json.loads(path.read_text())
    data["manifest"]["digest"] = "00" * 32
    path.write_text(json.dumps(data))
    assert ManifestStore(tmp_path).load("llama 3/8b") is None
    assert ManifestStore(None).load("anything") is None
