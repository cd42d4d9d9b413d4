"""Every malformed file in corpus/ makes `config check` exit 1 with the precise problems listed in
corpus/expected.toml, and neither `config check` nor `update_settings` changes a byte of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import ConfigErrors, load_settings, update_settings
from app.core.errors import ConfigError

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, dict[str, Any]] = tomllib.loads((CORPUS / "expected.toml").read_text(encoding="utf-8"))
REPO = Path(__file__).resolve().parents[3]
OLD_MTIME_NS = 1_500_000_000 * 10**9  # 2017: a rewrite cannot keep it by chance
IN_A_SUBPROCESS = ("syntax-error", "not-utf8", "multiple-problems", "schema-too-new")


def test_the_corpus_is_complete() -> None:
    files = {p.stem for p in CORPUS.glob("*.toml")} - {"expected"}
    assert files == set(EXPECTED), "every corpus file needs an entry in expected.toml, and the reverse"
    assert len(files) >= 20


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / "configs"
    folder.mkdir()
    for stand_in in CORPUS.glob("*.gguf"):  # model files the corpus configs point at
        shutil.copy(stand_in, folder / stand_in.name)
    path = folder / f"{name}.toml"
    shutil.copy(CORPUS / path.name, path)
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return path


def _assert_untouched(path: Path, name: str) -> None:
    assert path.read_bytes() == (CORPUS / path.name).read_bytes()
    assert path.stat().st_mtime_ns == OLD_MTIME_NS
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, *(p.name for p in CORPUS.glob("*.gguf"))]
    ), "no backup, temp file or migrated copy may appear"


def _assert_reported(path: Path, name: str, stderr: str) -> None:
    expected = EXPECTED[name]["problems"]
    lines = stderr.strip().splitlines()
    count = len(expected)
    assert lines[-1] == f"{count} problem{'s' if count != 1 else ''} in {path}"
    assert len(lines) == count + 1, stderr
    for line, problem in zip(lines, expected, strict=False):
        prefix = f"{path}:{problem['line']}: {problem['key']} = {problem['value']}: expected "
        assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
        assert problem["expected"] in line[len(prefix) :]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_check_reports_every_problem_and_changes_nothing(
    name: str, tmp_path: Path, config_cli: Callable[..., Any]
) -> None:
    path = _copy(name, tmp_path)
    result = config_cli("config", "check", str(path))
    assert result.code == 1
    assert result.out == ""
    _assert_reported(path, name, result.err)
    _assert_untouched(path, name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_settings_raises_the_same_facts(name: str, tmp_path: Path) -> None:
    path = _copy(name, tmp_path)
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    first = EXPECTED[name]["problems"][0]
    assert isinstance(caught.value, ConfigError)
    assert (caught.value.path, caught.value.key, caught.value.line) == (
        str(path),
        first["key"],
        first["line"],
    )
    assert [p.key for p in caught.value.problems] == [p["key"] for p in EXPECTED[name]["problems"]]
    _assert_untouched(path, name)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if not EXPECTED[n].get("update_ok")))
def test_a_failed_update_leaves_the_file_unchanged(name: str, tmp_path: Path) -> None:
    path = _copy(name, tmp_path)
    with pytest.raises(ConfigError):
        update_settings(path, auto_evict=False)
    _assert_untouched(path, name)


@pytest.mark.parametrize("name", IN_A_SUBPROCESS)
def test_the_real_cli_in_a_subprocess(name: str, tmp_path: Path, private_dirs: Path) -> None:
    path = _copy(name, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAM_STEWARD_")}
    env |= {f"VRAM_STEWARD_{d.upper()}_DIR": str(private_dirs / d) for d in ("config", "state", "log")}
    done = subprocess.run(
        [sys.executable, "-m", "app", "config", "check", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    _assert_reported(path, name, done.stderr)
    _assert_untouched(path, name)
