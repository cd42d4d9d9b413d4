"""The one atomic-write helper behind every file the app writes: the old file or the new one, never half;
a planted symlink is never followed; a failed write leaves no temp file; modes kept or set."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import atomic
from app.core.atomic import write_atomic


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_text_and_bytes_and_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    write_atomic(path, "first = 1\r\n")
    assert path.read_bytes() == b"first = 1\r\n"  # newlines as given
    write_atomic(path, b"\x00\xffsecond")
    assert path.read_bytes() == b"\x00\xffsecond"
    write_atomic(path, "")
    assert path.read_bytes() == b""
    assert leftovers(tmp_path) == []


def test_a_new_file_gets_the_default_mode_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    old_umask = os.umask(0o077)
    try:
        write_atomic(path, "a")
    finally:
        os.umask(old_umask)
    assert mode_of(path) == atomic.NEW_FILE_MODE  # not the umask's whim
    os.chmod(path, 0o640)
    write_atomic(path, "b")
    assert mode_of(path) == 0o640


def test_a_given_mode_is_set_exactly_and_tightens_a_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("old")
    os.chmod(path, 0o666)
    write_atomic(path, "secret\n", mode=0o600)
    assert mode_of(path) == 0o600
    assert path.read_text() == "secret\n"


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "endpoint.json"
    link.symlink_to(victim)
    write_atomic(link, "{}")
    assert victim.read_text() == "precious"
    assert not link.is_symlink()
    assert link.read_text() == "{}"


def planted_names(monkeypatch: pytest.MonkeyPatch, names: list[Path]) -> list[Path]:
    """Make the temp names predictable (as an attacker would like them to be): `names` first, in order."""
    given: list[Path] = []
    queue: Iterator[Path] = iter(names)
    real = atomic._temp_path

    def predictable(path: Path) -> Path:
        chosen = next(queue, None) or real(path)
        given.append(chosen)
        return chosen

    monkeypatch.setattr(atomic, "_temp_path", predictable)
    return given


def test_a_symlink_planted_at_the_temp_path_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    planted = tmp_path / ".api-token.planted.tmp"
    planted.symlink_to(victim)
    dangling = tmp_path / ".api-token.dangling.tmp"
    dangling.symlink_to(tmp_path / "would-be-created")
    given = planted_names(monkeypatch, [planted, dangling])

    write_atomic(tmp_path / "api-token", "secret\n", mode=0o600)

    assert given[:2] == [planted, dangling] and len(given) == 3  # both refused, a fresh name used
    assert victim.read_text() == "precious" and mode_of(victim) == 0o644
    assert not (tmp_path / "would-be-created").exists()
    assert planted.is_symlink() and dangling.is_symlink()  # not ours to remove
    assert (tmp_path / "api-token").read_text() == "secret\n"


def test_when_every_temp_name_is_taken_it_fails_without_touching_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / ".f.planted.tmp"
    planted.symlink_to(victim)
    monkeypatch.setattr(atomic, "_temp_path", lambda path: planted)
    target = tmp_path / "f"
    target.write_text("old")

    with pytest.raises(FileExistsError):
        write_atomic(target, "new")
    assert victim.read_text() == "precious"
    assert target.read_text() == "old"


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a-folder"
    target.mkdir()
    (target / "inside").write_text("x")  # os.replace cannot put a file over a folder with contents
    with pytest.raises(OSError):
        write_atomic(target, "data")
    assert target.is_dir()
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "settings.toml"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_an_interrupt_during_the_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(fd: int, data: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "f", "data")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_folder_is_an_error_not_a_silent_success(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no-such-folder" / "f", "data")
