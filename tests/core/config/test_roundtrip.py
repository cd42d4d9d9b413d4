"""Any valid Settings saves and loads back equal: into a new file, and over an existing commented one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.config import (
    RULE_ACTIONS,
    SERVER_KINDS,
    SETTING_SPECS,
    AppRule,
    ModelConfig,
    ServerConfig,
    Settings,
    SettingSpec,
    SpecKind,
    load_settings,
    save_settings,
    settings_to_toml,
    update_settings,
)
from app.core.units import GiB, MiB

WORDS = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
).filter(lambda s: s.strip() != "")


def value_for(spec: SettingSpec) -> st.SearchStrategy[Any]:
    low, high = spec.minimum, spec.maximum
    if spec.kind is SpecKind.BOOL:
        return st.booleans()
    if spec.kind is SpecKind.INT:
        return st.integers(
            int(low) if low is not None else -(2**31), int(high) if high is not None else 2**31
        )
    if spec.kind is SpecKind.OPTIONAL_INT:
        return st.none() | st.integers(int(low or 1), int(high or 2**31))
    if spec.kind is SpecKind.FLOAT:
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if spec.kind is SpecKind.SIZE:
        return (
            st.integers(0, 2**45)
            | st.integers(0, 64).map(lambda n: n * GiB)
            | st.integers(0, 9).map(lambda n: n * MiB + 1)
        )
    if spec.kind is SpecKind.TEXT_LIST:
        return st.lists(WORDS, max_size=3).map(tuple)
    if spec.key in ("api_tls_cert", "api_tls_key"):
        return st.just("")  # files that must exist in pairs: tests/core/api/test_remote_tls.py
    if spec.choices:
        return st.sampled_from(list(spec.choices))
    assert spec.key == "api_host"
    return st.sampled_from(["127.0.0.1", "localhost", "::1"])


@st.composite
def any_settings(draw: st.DrawFn) -> Settings:
    values = {spec.key: draw(value_for(spec)) for spec in SETTING_SPECS}
    values["max_cooldown_secs"] = max(values["max_cooldown_secs"], values["resume_cooldown_secs"])
    names = draw(st.lists(WORDS, max_size=3, unique=True))
    file_names = WORDS.filter(lambda s: "/" not in s and s not in (".", ".."))
    models = []
    for name in names:
        others = [n for n in names if n != name]
        variants = draw(st.lists(st.sampled_from(others), unique=True, max_size=2)) if others else []
        models.append(
            ModelConfig(
                name=name,
                path=Path("/models") / draw(file_names),
                gpu=draw(st.integers(0, 3)),
                priority=draw(st.integers(-1000, 1000)),
                variants=tuple(variants),
            )
        )
    rules = tuple(
        AppRule(draw(WORDS), draw(st.sampled_from(RULE_ACTIONS))) for _ in range(draw(st.integers(0, 2)))
    )
    servers = tuple(
        ServerConfig(
            draw(st.sampled_from([k for k in SERVER_KINDS if k not in ("command", "systemd", "freeze")])),
            draw(st.sampled_from(["http://127.0.0.1:11434", "https://gpu-box:8080/v1"])),
            draw(st.sampled_from(["5m", "-1", "0", "1h", "30s"])),
        )
        for _ in range(draw(st.integers(0, 2)))
    ) + draw(
        st.sampled_from(
            [
                (),
                (ServerConfig("command", stop="docker stop 'my app'", start="docker start x", match="x"),),
                (ServerConfig("systemd", unit="comfyui.service", user=False, timeout_s=12.5),),
                (ServerConfig("freeze", name="ComfyUI", match="ComfyUI/main.py"),),
            ]
        )
    )
    return Settings(**values, models=tuple(models), app_rules=rules, servers=servers)


COMMON = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(any_settings())
def test_any_settings_save_and_load_back_equal(generated: Settings) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        saved = save_settings(generated, path)
        assert saved == generated
        assert load_settings(path, check_files=False) == generated
        assert saved.source == path


@COMMON
@given(any_settings(), any_settings())
def test_saving_over_other_saved_settings_gives_exactly_the_new_ones(
    first: Settings, second: Settings
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        save_settings(first, path)
        changes = {spec.key: getattr(second, spec.key) for spec in SETTING_SPECS}
        updated = update_settings(path, **changes, models=second.models, servers=second.servers)
        assert updated == Settings(
            **changes, models=second.models, app_rules=first.app_rules, servers=second.servers
        )
        assert load_settings(path, check_files=False) == updated


@COMMON
@given(any_settings())
def test_config_show_output_is_a_valid_settings_file(generated: Settings) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text(settings_to_toml(generated), encoding="utf-8")
        assert load_settings(path, check_files=False) == generated
