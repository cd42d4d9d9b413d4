"""The read-only file mapping that CUDA page-locks for a zero-copy seal (libc mmap through ctypes): the
address it gives holds the file's bytes, and closing unmaps it. No GPU needed: CuPy is imported only by
CudaDevice itself."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest

from app.core.residency.host.cuda_device import _FileMap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libc mmap")


def test_the_mapping_holds_the_files_bytes_and_closes_once(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 123)  # not a whole number of pages: the last one is partly past the end
    path = tmp_path / "m.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        mapping = _FileMap(fd, len(data))
        assert mapping.address and mapping.nbytes == len(data)
        assert ctypes.string_at(mapping.address, len(data)) == data
        assert ctypes.string_at(mapping.address + 4096 + 7, 100) == data[4096 + 7 : 4096 + 107]
        mapping.close()
        assert mapping.address == 0
        mapping.close()  # twice is harmless
    finally:
        os.close(fd)


def test_a_file_that_cannot_be_mapped_says_so(tmp_path: Path) -> None:
    from app.core.residency.seal import FileMappingUnavailable

    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: mmap fails with ENODEV
    try:
        with pytest.raises(FileMappingUnavailable, match="mmap failed"):
            _FileMap(fd, 4096)
    finally:
        os.close(fd)
