"""Loading: defaults, sizes, model paths and GPUs, the error object, and the specs the dialog builds from."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from app.core import config, paths
from app.core.config import (
    SETTING_SPECS,
    SPECS_BY_KEY,
    TABLE_SPECS,
    ConfigErrors,
    ModelConfig,
    Settings,
    SpecKind,
    load_settings,
)
from app.core.errors import ConfigError, VramError
from app.core.units import GiB, MiB


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_missing_default_file_gives_the_defaults() -> None:
    assert not paths.default_config_file().exists()
    settings = load_settings()
    assert settings == Settings()
    assert settings.source is None
    assert not paths.default_config_file().exists(), "loading must not create the file"


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "nope.toml")
    assert caught.value.key == "(file)"
    assert "config init" in caught.value.expected


def test_the_default_file_is_used_when_present() -> None:
    write(paths.default_config_file(), "auto_evict = false\n")
    settings = load_settings()
    assert settings.auto_evict is False
    assert settings.source == paths.default_config_file()


def test_sizes_accept_strings_and_ints_and_numbers_become_floats(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        'reserved_system_vram = "3 GiB"\npressure_threshold = 1048576\nbaseline_max_process_vram = "1.5 GB"\n'
        "headroom_percent = 12\n",
    )
    settings = load_settings(path)
    assert settings.reserved_system_vram == 3 * GiB
    assert settings.pressure_threshold == MiB
    assert settings.baseline_max_process_vram == 1_500_000_000
    assert settings.headroom_percent == 12.0 and isinstance(settings.headroom_percent, float)
    assert settings.headroom_bytes(100 * GiB) == 12 * GiB


def test_model_paths_resolve_against_the_config_folder_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    write(home / "models" / "b.gguf", "b")
    write(tmp_path / "cfg" / "models" / "a.gguf", "a")
    path = write(
        tmp_path / "cfg" / "config.toml",
        'gpu_device = 1\n\n[[models]]\nname = "a"\npath = "models/../models/a.gguf"\n\n'
        '[[models]]\nname = "b"\npath = "~/models/b.gguf"\ngpu = 0\npriority = 5\nvariants = ["a"]\n',
    )
    settings = load_settings(path)
    assert settings.models == (
        ModelConfig(name="a", path=tmp_path / "cfg" / "models" / "a.gguf", gpu=1),
        ModelConfig(name="b", path=home / "models" / "b.gguf", gpu=0, priority=5, variants=("a",)),
    )
    assert settings.model("b") is settings.models[1]


def test_a_relative_config_path_still_gives_absolute_model_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "cfg" / "a.gguf", "a")
    write(tmp_path / "cfg" / "config.toml", '[[models]]\nname = "a"\npath = "a.gguf"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("cfg/config.toml"))
    assert settings.models[0].path == tmp_path / "cfg" / "a.gguf"


def test_check_files_false_skips_only_the_file_check(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[[models]]\nname = "a"\npath = "gone.gguf"\n')
    assert load_settings(path, check_files=False).models[0].path == tmp_path / "gone.gguf"
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    assert caught.value.key == "models[0].path"
    assert str(tmp_path / "gone.gguf") in caught.value.expected


def test_a_folder_is_not_a_model_file(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    path = write(tmp_path / "c.toml", '[[models]]\nname = "a"\npath = "dir.gguf"\n')
    with pytest.raises(ConfigErrors, match="is a folder"):
        load_settings(path)


def test_a_remote_api_host_is_fine_when_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'api_host = "0.0.0.0"\nallow_remote_api = true\n')
    assert load_settings(path).api_host == "0.0.0.0"
    for host in ("localhost", "::1", "127.0.0.2"):
        assert load_settings(write(tmp_path / "h.toml", f'api_host = "{host}"\n')).api_host == host


def test_thermal_pause_zero_means_off(tmp_path: Path) -> None:
    assert (
        load_settings(write(tmp_path / "c.toml", "thermal_pause_celsius = 0\n")).thermal_pause_celsius is None
    )
    assert (
        load_settings(write(tmp_path / "c.toml", "thermal_pause_celsius = 85\n")).thermal_pause_celsius == 85
    )
    with pytest.raises(ConfigErrors, match="0 \\(off\\) or a whole number from 40 to 110"):
        load_settings(write(tmp_path / "c.toml", "thermal_pause_celsius = 20\n"))


def test_a_schema_1_key_in_a_schema_2_file_names_the_new_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "schema_version = 2\ncheck_interval = 2\n")
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    assert caught.value.key == "check_interval"
    assert "process_check_interval_secs" in caught.value.expected


def test_config_errors_carry_the_first_problem_and_all_of_them(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'api_port = 70000\nauto_evict = "no"\n')
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    error = caught.value
    assert isinstance(error, ConfigError) and isinstance(error, VramError)
    assert (error.key, error.value, error.line) == ("api_port", 70000, 1)
    assert [(p.key, p.line) for p in error.problems] == [("api_port", 1), ("auto_evict", 2)]
    assert str(error).splitlines() == [p.message for p in error.problems]
    problem = error.to_problem()
    assert problem["error"] == "config_error"
    assert [p["key"] for p in problem["details"]["problems"]] == ["api_port", "auto_evict"]
    with pytest.raises(ValueError):
        ConfigErrors([])


# --- the specs: one source for the dialog and for validation ------------------------------------


def test_every_scalar_setting_has_exactly_one_spec_with_its_default() -> None:
    scalar_fields = {
        f.name: f.default
        for f in dataclasses.fields(Settings)
        if f.name not in ("source", "models", "app_rules", "servers")
    }
    assert [s.key for s in SETTING_SPECS] == list(dict.fromkeys(s.key for s in SETTING_SPECS))
    assert {s.key: s.default for s in SETTING_SPECS} == scalar_fields
    assert {t.key for t in TABLE_SPECS} == {"models", "app_rules", "servers"}
    for spec in SETTING_SPECS:
        assert spec.label and spec.help and spec.section, spec.key
        assert spec.coerce(spec.to_toml(spec.default)) == spec.default, spec.key


def test_spec_limits_are_what_validation_enforces() -> None:
    headroom = SPECS_BY_KEY["headroom_percent"]
    assert (headroom.minimum, headroom.maximum) == (0, 90)
    assert headroom.coerce(90) == 90.0
    with pytest.raises(ValueError, match="from 0 to 90"):
        headroom.coerce(90.5)
    with pytest.raises(ValueError, match="true or false"):
        SPECS_BY_KEY["auto_evict"].coerce("true")
    with pytest.raises(ValueError, match="a whole number"):
        SPECS_BY_KEY["api_port"].coerce(True)
    assert SPECS_BY_KEY["reserved_system_vram"].kind is SpecKind.SIZE
    assert SPECS_BY_KEY["reserved_system_vram"].to_toml(3 * GiB) == "3 GiB"
    assert SPECS_BY_KEY["reserved_system_vram"].to_toml(GiB + 1) == GiB + 1
    assert SPECS_BY_KEY["exclusive_apps"].coerce(["a", "b"]) == ("a", "b")
    with pytest.raises(ValueError):
        SPECS_BY_KEY["exclusive_apps"].coerce(["a", ""])


def test_the_shipped_default_file_states_every_key_with_its_default_and_a_reason() -> None:
    text = config.default_config_text()
    data = tomllib.loads(text)
    assert data["schema_version"] == config.SCHEMA_VERSION
    assert set(data) - {"schema_version"} == {s.key for s in SETTING_SPECS}
    lines = text.splitlines()
    for spec in SETTING_SPECS:
        index = next(i for i, line in enumerate(lines) if re.match(rf"{spec.key}\s*=", line))
        assert lines[index - 1].startswith("# "), f"{spec.key} needs a comment line saying why"
        assert spec.coerce(data[spec.key]) == spec.default, spec.key
    assert load_settings(write(paths.default_config_file(), text)) == Settings()


def test_the_repository_keeps_one_copy_of_the_default_file() -> None:
    repo = Path(__file__).resolve().parents[3]
    assert (repo / "app" / "data" / "default-config.toml").read_text(encoding="utf-8") == (
        config.default_config_text()
    )


def test_docs_name_every_key() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "config.md").read_text(encoding="utf-8")
    for spec in SETTING_SPECS:
        assert f"| `{spec.key}` |" in docs, spec.key
    for table in TABLE_SPECS:
        assert f"### [[{table.key}]]" in docs
        for field in table.fields:
            assert f"| `{field.key}` |" in docs, f"{table.key}.{field.key}"
