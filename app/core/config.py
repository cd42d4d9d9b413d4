"""Settings: a TOML file in the platform config dir (or --config FILE), validated, saved atomically.

- `load_settings()` reads and validates the file and reports every problem at once (`ConfigErrors`), each
  naming the file, line, key, value and what was expected. A schema 1 file is migrated to schema 2 (the
  original is kept as `<file>.v1.bak`).
- `update_settings()` / `save_settings()` edit the user's file with tomlkit, so comments and layout stay;
  the result is validated before anything is written, and written atomically. A file that does not load
  is never overwritten.
- `SETTING_SPECS` / `TABLE_SPECS` declare every key as data (type, default, label, help, limits): the
  settings dialog builds itself from them and validation uses them, so the two cannot drift.

The file layout is documented in docs/config.md; the commented default file is app/data/default-config.toml.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.resources
import logging
import math
import os
import re
import shlex
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.items

from app.core import paths
from app.core.atomic import write_atomic
from app.core.errors import MISSING, ConfigError
from app.core.loopback import is_loopback
from app.core.private import private_dir
from app.core.settings import AppRule, ModelConfig, ServerConfig, Settings
from app.core.units import GiB, KiB, MiB, SizeParseError, TiB, parse_size

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "AppRule",
    "ConfigErrors",
    "ModelConfig",
    "ServerConfig",
    "Settings",
    "ensure_default_config",
    "load_settings",
    "save_settings",
    "update_settings",
]

SCHEMA_VERSION = 2
OLDEST_SCHEMA_VERSION = 1


# --- the keys, declared as data ------------------------------------------------------------------


class SpecKind(enum.StrEnum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    SIZE = "size"  # bytes: an int, or a string with a unit ("2 GiB")
    TEXT = "text"
    TEXT_LIST = "text_list"
    OPTIONAL_INT = "optional_int"  # 0 in the file means "off" (None)


@dataclass(frozen=True)
class SettingSpec:
    """One key: what the settings dialog shows and what validation enforces."""

    key: str
    kind: SpecKind
    default: Any
    label: str
    help: str
    section: str = ""
    unit: str = ""  # shown next to the field: "s", "%", "°C"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False  # table fields only: the entry is invalid without it

    def expected(self) -> str:
        """What a valid value looks like, in words (used in error messages)."""
        if self.kind is SpecKind.BOOL:
            return "true or false (a TOML boolean, without quotes)"
        if self.choices:
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        if self.kind is SpecKind.TEXT:
            if self.default == "":  # an optional path: empty means none
                return "a string in quotes (empty: none)"
            return "a non-empty string in quotes"
        if self.kind is SpecKind.TEXT_LIST:
            return 'a list of non-empty strings, e.g. ["blender"]'
        what = {
            SpecKind.INT: "a whole number",
            SpecKind.FLOAT: "a number",
            SpecKind.SIZE: 'a size such as "2 GiB", "512 MiB" or a number of bytes',
            SpecKind.OPTIONAL_INT: "0 (off) or a whole number",
        }[self.kind]
        if self.unit == "s":
            what += " of seconds"
        if self.kind is SpecKind.SIZE:
            low = _size_text(int(self.minimum)) if self.minimum is not None else None
            high = _size_text(int(self.maximum)) if self.maximum is not None else None
        else:
            low = _number_text(self.minimum)
            high = _number_text(self.maximum)
        if low is not None and high is not None:
            return f"{what} from {low} to {high}"
        if low is not None:
            return f"{what} of at least {low}"
        if high is not None:
            return f"{what} of at most {high}"
        return what

    def coerce(self, raw: object) -> Any:
        """The typed value for a raw TOML value; raises ValueError(expected-in-words) when invalid."""
        expected = self.expected()
        if self.kind is SpecKind.BOOL:
            if not isinstance(raw, bool):
                raise ValueError(expected)
            return raw
        if self.kind in (SpecKind.TEXT, SpecKind.TEXT_LIST):
            if self.kind is SpecKind.TEXT_LIST:
                if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
                    raise ValueError(expected)
                return tuple(raw)
            if raw == "" and self.default == "":  # an optional path (api_tls_cert): empty means none
                return raw
            if not isinstance(raw, str) or not raw.strip() or (self.choices and raw not in self.choices):
                raise ValueError(expected)
            return raw
        number: int | float
        if self.kind is SpecKind.SIZE:
            try:
                number = parse_size(raw)
            except SizeParseError as exc:
                raise ValueError(f"{expected} ({exc})") from None
        elif self.kind in (SpecKind.INT, SpecKind.OPTIONAL_INT):
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError(expected)
            if self.kind is SpecKind.OPTIONAL_INT and raw == 0:
                return None
            number = raw
        else:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                raise ValueError(expected)
            number = float(raw)
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise ValueError(expected)
        return number

    def to_toml(self, value: Any) -> Any:
        """The raw TOML value for a typed value (sizes as readable strings; None as 0)."""
        if self.kind is SpecKind.SIZE and isinstance(value, int) and not isinstance(value, bool):
            return _size_text(value)
        if self.kind is SpecKind.OPTIONAL_INT and value is None:
            return 0
        if self.kind is SpecKind.TEXT_LIST and isinstance(value, tuple):
            return list(value)
        return value


@dataclass(frozen=True)
class TableSpec:
    """An array of tables ([[models]], [[app_rules]], [[servers]]) and the fields of each entry."""

    key: str
    label: str
    help: str
    fields: tuple[SettingSpec, ...]

    def field_spec(self, key: str) -> SettingSpec | None:
        return next((f for f in self.fields if f.key == key), None)


def _default(key: str) -> Any:
    value = {f.name: f.default for f in dataclasses.fields(Settings)}[key]
    return value


def _spec(key: str, kind: SpecKind, label: str, help: str, section: str, **limits: Any) -> SettingSpec:
    return SettingSpec(
        key=key, kind=kind, default=_default(key), label=label, help=help, section=section, **limits
    )


_B, _I, _F, _S, _T = SpecKind.BOOL, SpecKind.INT, SpecKind.FLOAT, SpecKind.SIZE, SpecKind.TEXT

SETTING_SPECS: tuple[SettingSpec, ...] = (
    _spec("gpu_device", _I, "Default GPU", "The GPU (nvidia-smi index) for models without their own gpu.",
          "GPU", minimum=0, maximum=63),
    _spec("allow_shared_gpu", _B, "Share the GPU",
          "Load models while other compute applications use the GPU (off: dedicated mode).", "GPU"),
    _spec("reserved_system_vram", _S, "Reserved VRAM",
          "VRAM always left free for the desktop and your applications.", "GPU"),
    _spec("headroom_percent", _F, "Headroom",
          "Headroom as a percent of total VRAM; the larger of the two applies.", "GPU",
          unit="%", minimum=0, maximum=90),
    _spec("auto_evict", _B, "Free VRAM under pressure",
          "Free our VRAM when another application needs it.", "Eviction"),
    _spec("auto_pause_for_gaming", _B, "Free VRAM for games",
          "Free our VRAM as soon as a game starts.", "Eviction"),
    _spec("pressure_threshold", _S, "Pressure threshold",
          "Foreign VRAM growth above the baseline that counts as pressure.", "Eviction"),
    _spec("pressure_threshold_percent", _F, "Pressure threshold (percent)",
          "The same threshold as a percent of total VRAM; the larger applies.", "Eviction",
          unit="%", minimum=0, maximum=100),
    _spec("pressure_samples", _I, "Pressure samples",
          "Consecutive samples over the threshold before we act.", "Eviction", minimum=1, maximum=100),
    _spec("baseline_max_process_vram", _S, "Desktop process size",
          "Processes present at start and smaller than this count as the desktop.", "Eviction"),
    _spec("thermal_pause_celsius", SpecKind.OPTIONAL_INT, "Thermal pause",
          "Free VRAM when the GPU is hotter than this (0 = off).", "Eviction",
          unit="°C", minimum=40, maximum=110),
    _spec("hold_models_on_battery", _B, "Keep models on battery",
          "Keep models loaded while on battery power.", "Eviction"),
    _spec("exclusive_apps", SpecKind.TEXT_LIST, "Exclusive applications",
          "Executables that always get the GPU to themselves.", "Eviction"),
    _spec("vulkan_layer_socket", _B, "Answer the Vulkan layer",
          "Listen for the optional Vulkan layer (vram-steward vulkan-layer install), which reports a game "
          "before it creates its device.", "Eviction"),
    _spec("vulkan_unknown_apps", _T, "Unknown Vulkan apps",
          "wait: free VRAM for any Vulkan app that is not a known game or desktop program; ignore: only "
          "for games.", "Eviction", choices=("wait", "ignore")),
    _spec("process_check_interval_secs", _F, "Game scan interval",
          "How often the process table is scanned for games.", "Timing", unit="s", minimum=0.05, maximum=60),
    _spec("poll_interval_secs", _F, "Poll interval (holding)",
          "How often VRAM is sampled while we hold models.", "Timing", unit="s", minimum=0.01, maximum=10),
    _spec("idle_poll_interval_secs", _F, "Poll interval (idle)",
          "How often VRAM is sampled while we hold nothing.", "Timing", unit="s", minimum=0.05, maximum=60),
    _spec("resume_cooldown_secs", _F, "Resume cooldown",
          "Calm time with no signal before models are reloaded.", "Timing",
          unit="s", minimum=0, maximum=3600),
    _spec("max_cooldown_secs", _F, "Longest cooldown",
          "The cooldown doubles when a signal returns, up to this.", "Timing",
          unit="s", minimum=0, maximum=86400),
    _spec("calm_reset_secs", _F, "Calm reset",
          "After this long without signals the cooldown starts over.", "Timing",
          unit="s", minimum=0, maximum=604800),
    _spec("notifications", _B, "Notifications", "Show desktop notifications.", "Notifications"),
    _spec("notification_coalesce_secs", _F, "Notification spacing",
          "At most one notification of each kind per this many seconds.", "Notifications",
          unit="s", minimum=0, maximum=3600),
    _spec("api_host", _T, "API address", "The address the control API listens on.", "API"),
    _spec("api_port", _I, "API port", "The TCP port of the control API; 0 takes any free port.", "API",
          minimum=0, maximum=65535),
    _spec("allow_remote_api", _B, "Allow remote API",
          "Allow a non-loopback API address (reachable from the network).", "API"),
    _spec("api_tls_cert", _T, "API TLS certificate",
          "PEM certificate the remote API serves (empty: a self-signed one, made at first use).", "API"),
    _spec("api_tls_key", _T, "API TLS key", "The private key of api_tls_cert (PEM).", "API"),
)  # fmt: skip

SPECS_BY_KEY: dict[str, SettingSpec] = {s.key: s for s in SETTING_SPECS}

SERVER_KINDS = (
    "ollama", "llama_cpp", "llama_swap", "lm_studio", "text_generation_webui", "vllm", "sglang",
    "comfyui", "a1111", "forge", "invokeai", "localai", "koboldcpp", "command", "systemd", "freeze",
)  # fmt: skip
# Kinds without an HTTP API: VRAM Steward stops and starts them (app/core/servers/generic.py). The keys each
# kind uses; every other kind is a server or app with an API and uses url, keep_alive and api_key.
STOP_START_KEYS: dict[str, tuple[str, ...]] = {
    "command": ("kind", "stop", "start", "match", "timeout_s"),
    "systemd": ("kind", "unit", "user", "timeout_s"),
    "freeze": ("kind", "name", "match"),  # any CUDA app, frozen by the driver's checkpoint API
}
API_KEYS = ("kind", "url", "keep_alive", "api_key")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")
RULE_ACTIONS = ("evict", "ignore")
_KEEP_ALIVE_RE = re.compile(r"^-?\d+(\.\d+)?(ms|s|m|h)?$")


def _field(
    key: str, kind: SpecKind, label: str, help: str, default: Any = None, **limits: Any
) -> SettingSpec:
    return SettingSpec(key=key, kind=kind, default=default, label=label, help=help, **limits)


TABLE_SPECS: tuple[TableSpec, ...] = (
    TableSpec("models", "Models", "Models kept resident in VRAM while the GPU is free.", (
        _field("name", _T, "Name", "Unique name, used by the API and the CLI.", required=True),
        _field("path", _T, "File", "The model file; relative paths are relative to the config file.",
               required=True),
        _field("gpu", _I, "GPU", "The GPU index; defaults to gpu_device.", minimum=0, maximum=63),
        _field("priority", _I, "Priority", "Under pressure the lowest priority is evicted first.", 0,
               minimum=-1000, maximum=1000),
        _field("variants", SpecKind.TEXT_LIST, "Smaller variants", "Fallback model names, best first.", ()),
    )),
    TableSpec("app_rules", "Application rules", "Per-application overrides of the eviction policy.", (
        _field("match", _T, "Application", 'An executable name, or "steam:<AppId>".', required=True),
        _field("action", _T, "Action", "evict: free VRAM when it runs; ignore: never counts as pressure.",
               required=True, choices=RULE_ACTIONS),
    )),
    TableSpec("servers", "Managed servers and apps",
              "Everything else that holds VRAM for you: model servers, AI apps, commands, systemd units.", (
        _field("kind", _T, "Kind", "The server or app, or command / systemd.", required=True,
               choices=SERVER_KINDS),
        _field("url", _T, "URL", "Where the server listens (http or https); not for command / systemd.", ""),
        _field("keep_alive", _T, "Keep alive", 'How long the server keeps a model loaded ("5m", "-1").',
               "5m"),
        _field("api_key", _T, "API key", "Sent as a bearer token, for a server that requires one.", ""),
        _field("stop", _T, "Stop command", "kind = command: the command line that stops it (no shell).", ""),
        _field("start", _T, "Start command", "kind = command: the command line that starts it (no shell).",
               ""),
        _field("match", _T, "Its processes",
               "kind = command / freeze: an executable name or command-line part.", ""),
        _field("name", _T, "Name", "kind = freeze: the app's name for people (default: match).", ""),
        _field("unit", _T, "Unit", 'kind = systemd: the unit, e.g. "comfyui.service".', ""),
        _field("user", _B, "User unit", "kind = systemd: a user unit (systemctl --user), or not.",
               True),
        _field("timeout_s", _F, "Timeout", "kind = command / systemd: the longest a stop or start may take.",
               30.0, unit="s", minimum=1, maximum=3600),
    )),
)  # fmt: skip

TABLES_BY_KEY: dict[str, TableSpec] = {t.key: t for t in TABLE_SPECS}

# Schema 1 names that schema 2 renamed (docs/config.md, "Schema 1").
_V1_RENAMES = {
    "reserved_system_vram_mb": "reserved_system_vram",
    "check_interval": "process_check_interval_secs",
}
_V1_MODELS_KEY = "model"


def _number_text(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def _size_text(n: int) -> Any:
    """A byte count as the most readable exact TOML value: "2 GiB", "512 MiB", or the int itself."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n and n % unit == 0:
            return f"{n // unit} {name}"
    return n


# --- errors --------------------------------------------------------------------------------------


class ConfigErrors(ConfigError):
    """Every problem found in one settings file. Carries the first problem's facts (path, key, value,
    expected, line) like a ConfigError, and all of them in `problems`."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        if not problems:
            raise ValueError("ConfigErrors needs at least one problem")
        first = problems[0]
        super().__init__(
            path=first.path, key=first.key, value=first.value, expected=first.expected, line=first.line
        )
        self.problems: tuple[ConfigError, ...] = tuple(problems)
        self.message = "\n".join(p.message for p in self.problems)
        self.args = (self.message,)
        self.details["problems"] = [p.details for p in self.problems]


# --- where keys are in the text ------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_\-.\"' ]+?)\s*\]\]")
_TABLE_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-.\"' ]+?)\s*\]")
_KEY_RE = re.compile(r"^\s*(?:\"([^\"]+)\"|'([^']+)'|([A-Za-z0-9_\-]+))\s*[=.]")


class _KeyLines:
    """Finds the line of a key by scanning the text (tomllib gives no positions). Best effort: dotted keys
    and keys inside inline tables are found by their first line only."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        counts: dict[str, int] = {}
        prefix: tuple[str, ...] = ()
        quote: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if quote is not None:  # inside a multi-line string
                if line.count(quote) % 2 == 1:
                    quote = None
                continue
            if match := _HEADER_RE.match(line):
                name = match[1].strip().strip("\"'")
                index = counts.get(name, 0)
                counts[name] = index + 1
                prefix = (name, str(index))
                self._lines.setdefault((name,), number)
                self._lines.setdefault(prefix, number)
            elif match := _TABLE_RE.match(line):
                prefix = (match[1].strip().strip("\"'"),)
                self._lines.setdefault(prefix, number)
            elif match := _KEY_RE.match(line):
                key = match[1] or match[2] or match[3]
                self._lines.setdefault((*prefix, key), number)
            for q in ('"""', "'''"):
                if line.count(q) % 2 == 1:
                    quote = q

    def line(self, where: tuple[str, ...]) -> int | None:
        """The line of the key at `where`, or of its closest enclosing key or table (in a schema 1 file,
        under its schema 1 name)."""
        for end in range(len(where), 0, -1):
            part = where[:end]
            v1_name = _V1_NAMES.get(part[0], part[0])
            for candidate in (part, (v1_name, *part[1:])):
                if candidate in self._lines:
                    return self._lines[candidate]
        return None


_V1_NAMES = {new: old for old, new in _V1_RENAMES.items()} | {"models": _V1_MODELS_KEY}


def _key_name(where: tuple[str, ...]) -> str:
    """("models", "0", "gpu") -> "models[0].gpu"."""
    out = ""
    for part in where:
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Problems:
    """Collects problems found in one file, each with the line where the key is."""

    def __init__(self, path: Path, text: str = "") -> None:
        self.path = path
        self.lines = _KeyLines(text)
        self.found: list[ConfigError] = []

    def add(self, where: tuple[str, ...], value: object, expected: str) -> None:
        self.found.append(
            ConfigError(
                path=str(self.path),
                key=_key_name(where),
                value=value,
                expected=expected,
                line=self.lines.line(where),
            )
        )

    def raise_if_any(self) -> None:
        if self.found:
            in_file_order = sorted(self.found, key=lambda p: p.line if p.line is not None else 1 << 30)
            raise ConfigErrors(in_file_order)


# --- reading -------------------------------------------------------------------------------------

_TOML_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)\s*$")


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark (some Windows editors write one) is fine
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigErrors(
            [
                ConfigError(
                    path=str(path),
                    key="(encoding)",
                    value=data[exc.start : exc.start + 1],
                    expected=f"UTF-8 text (column {column}): TOML files must be UTF-8; save it as UTF-8",
                    line=line,
                )
            ]
        ) from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line: int | None = None
        where = ""
        if match := _TOML_POSITION_RE.search(message):
            line = int(match[1])
            where = f" at column {match[2]}"
            message = message[: match.start()]
        elif match := _TOML_END_RE.search(message):
            line = max(text.count("\n"), 1)
            where = " at the end of the file"
            message = message[: match.start()]
        raise ConfigErrors(
            [
                ConfigError(
                    path=str(path),
                    key="(TOML syntax)",
                    value=message,
                    expected=f"valid TOML{where} (check quotes, brackets, commas and repeated keys)",
                    line=line,
                )
            ]
        ) from None


def _read(path: Path) -> tuple[bytes, str, dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigErrors(
            [
                ConfigError(
                    path=str(path),
                    key="(file)",
                    value=str(path),
                    expected="an existing settings file (run `vram-steward config init` to write one)",
                )
            ]
        ) from None
    except OSError as exc:
        raise ConfigErrors(
            [
                ConfigError(
                    path=str(path),
                    key="(file)",
                    value=str(path),
                    expected=f"a readable file ({exc.strerror})",
                )
            ]
        ) from None
    text = _decode(path, data)
    return data, text, _parse(path, text)


# --- schema versions -----------------------------------------------------------------------------


def _schema_version(raw: Mapping[str, Any], problems: _Problems) -> int | None:
    """The file's schema version; None (with a problem recorded) when it cannot be used."""
    if "schema_version" not in raw:
        v1_markers = set(_V1_RENAMES) | {_V1_MODELS_KEY}
        return 1 if v1_markers & set(raw) else SCHEMA_VERSION
    version = raw["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < OLDEST_SCHEMA_VERSION:
        problems.add(
            ("schema_version",), version, f"a whole number from {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}"
        )
        return None
    if version > SCHEMA_VERSION:
        problems.add(
            ("schema_version",),
            version,
            f"at most {SCHEMA_VERSION}: this file was written by a newer VRAM Steward; upgrade the app "
            "(this version leaves the file untouched)",
        )
        return None
    return version


def _migrate_v1(raw: Mapping[str, Any], problems: _Problems) -> dict[str, Any]:
    """Schema 1 -> 2 as data: reserved_system_vram_mb (int MiB) -> reserved_system_vram ("N MiB"),
    check_interval -> process_check_interval_secs, [[model]] -> [[models]]."""
    out = dict(raw)
    out["schema_version"] = SCHEMA_VERSION
    for old, new in (*_V1_RENAMES.items(), (_V1_MODELS_KEY, "models")):
        if old not in out:
            continue
        if new in out:
            problems.add((old,), out[old], f"either {old} (schema 1) or {new} (schema 2), not both")
            continue
        value = out.pop(old)
        if old == "reserved_system_vram_mb":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.add((old,), value, "a whole number of MiB of at least 0")
                continue
            value = f"{value} MiB"
        out[new] = value
    return out


_V1_TEXT_EDITS = (
    (re.compile(r"^(\s*)reserved_system_vram_mb(\s*=\s*)(\d+)", re.M), r'\1reserved_system_vram\2"\3 MiB"'),
    (re.compile(r"^(\s*)check_interval(\s*=)", re.M), r"\1process_check_interval_secs\2"),
    (re.compile(r"^(\s*)\[\[\s*model\s*\]\]", re.M), r"\1[[models]]"),
)


def _migrated_text(text: str, migrated: dict[str, Any]) -> str:
    """The schema 2 text: the user's text with the renamed keys edited in place (comments stay), or, when
    the layout is too unusual for that, the migrated data written fresh."""
    new = text
    for pattern, replacement in _V1_TEXT_EDITS:
        new = pattern.sub(replacement, new)
    version_re = re.compile(r"^(\s*schema_version\s*=\s*)1\b", re.M)
    if version_re.search(new):
        new = version_re.sub(rf"\g<1>{SCHEMA_VERSION}", new, count=1)
    else:
        lines = new.splitlines(keepends=True)
        at = next(
            (i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")), len(lines)
        )
        lines.insert(at, f"schema_version = {SCHEMA_VERSION}\n")
        new = "".join(lines)
    try:
        if tomllib.loads(new) == migrated:
            return new
    except tomllib.TOMLDecodeError:
        pass
    logger.warning("could not keep the comments while migrating the settings file; writing it fresh")
    return tomlkit.dumps(migrated)


def _backup_path(path: Path, version: int) -> Path:
    candidate = path.with_name(f"{path.name}.v{version}.bak")
    number = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.name}.v{version}.{number}.bak")
        number += 1
    return candidate


def _write_migration(path: Path, original: bytes, new_text: str, version: int) -> None:
    target = _real_path(path)
    backup = _backup_path(target, version)
    try:
        with open(backup, "xb") as out:
            out.write(original)
            out.flush()
            os.fsync(out.fileno())
        try:
            write_atomic(target, new_text)
        except OSError:
            backup.unlink()  # the original is still in place: no backup piling up at every start
            raise
    except OSError as exc:
        logger.warning(
            "settings file %s uses schema %d; could not migrate it to schema %d (%s): using the migrated "
            "settings in memory and leaving the file as it is",
            path,
            version,
            SCHEMA_VERSION,
            exc,
        )
        return
    logger.warning(
        "migrated settings file %s from schema %d to %d; the original is kept as %s",
        path,
        version,
        SCHEMA_VERSION,
        backup,
    )


# --- validation ----------------------------------------------------------------------------------


def _unknown(problems: _Problems, where: tuple[str, ...], value: object, known: Sequence[str]) -> None:
    key = where[-1]
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if key in _V1_RENAMES or key == _V1_MODELS_KEY:
        new = _V1_RENAMES.get(key, "models")
        hint = f"{new} ({key} is the schema 1 name; see docs/config.md)"
    elif close:
        hint = f"{close[0]}?"
    else:
        hint = "one of the keys in docs/config.md"
    problems.add(where, value, f"a known key; did you mean {hint}" if close else f"a known key: {hint}")


def _check_url(url: str) -> str | None:
    """Why `url` is not a usable http(s) URL, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"an http:// or https:// URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return 'an http:// or https:// URL with a host, e.g. "http://127.0.0.1:11434"'
    return None


_Entry = tuple[tuple[str, ...], dict[str, Any], bool]


def _table_entries(raw: Mapping[str, Any], spec: TableSpec, problems: _Problems) -> list[_Entry]:
    """The entries of an array of tables: where each is, its valid fields, and whether all were valid."""
    value = raw.get(spec.key, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        problems.add((spec.key,), value, f"an array of tables: one [[{spec.key}]] section per entry")
        return []
    entries: list[_Entry] = []
    known = [f.key for f in spec.fields]
    for index, entry in enumerate(value):
        where = (spec.key, str(index))
        checked: dict[str, Any] = {}
        ok = True
        for key, item in entry.items():
            field_spec = spec.field_spec(key)
            if field_spec is None:
                if key in SPECS_BY_KEY:  # a top-level setting written below a [[table]] header joins it
                    problems.add(
                        (*where, key),
                        item,
                        f"a key of [[{spec.key}]] ({', '.join(known)}): {key} is a top-level setting; "
                        f"move it above the first [[{spec.key}]] line (TOML puts every key after a "
                        "[[table]] header into that table)",
                    )
                else:
                    _unknown(problems, (*where, key), item, known)
                ok = False
                continue
            try:
                checked[key] = field_spec.coerce(item)
            except ValueError as exc:
                problems.add((*where, key), item, str(exc))
                ok = False
        for field_spec in spec.fields:
            if field_spec.required and field_spec.key not in entry:
                expected = f"{field_spec.expected()} (required in [[{spec.key}]])"
                problems.add((*where, field_spec.key), MISSING, expected)
                ok = False
        entries.append((where, checked, ok))
    return entries


def _expand_path(raw: str, base: Path | None) -> Path:
    path = Path(os.path.expanduser(raw))
    if not path.is_absolute() and base is not None:
        path = base / path
    return Path(os.path.normpath(path)) if path.is_absolute() else path


def _validate(
    raw: Mapping[str, Any], path: Path, text: str, *, check_files: bool, base: Path | None
) -> Settings:
    """Settings from the parsed (schema 2) data, or ConfigErrors naming every problem."""
    problems = _Problems(path, text)
    values = _validate_scalars(raw, problems)
    _check_tls_files(values, raw, problems, check_files=check_files, base=base)
    gpu_device = values.get("gpu_device", SPECS_BY_KEY["gpu_device"].default)
    models = _validate_models(raw, problems, gpu_device=gpu_device, check_files=check_files, base=base)
    rules = [AppRule(**e) for _, e, ok in _table_entries(raw, TABLES_BY_KEY["app_rules"], problems) if ok]
    servers = _validate_servers(raw, problems)
    problems.raise_if_any()
    return Settings(**values, models=models, app_rules=tuple(rules), servers=servers, source=path)


def _validate_scalars(raw: Mapping[str, Any], problems: _Problems) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known_top = ["schema_version", *SPECS_BY_KEY, *TABLES_BY_KEY]
    for key, value in raw.items():
        if key == "schema_version" or key in TABLES_BY_KEY:
            continue
        spec = SPECS_BY_KEY.get(key)
        if spec is None:
            _unknown(problems, (key,), value, known_top)
            continue
        try:
            values[key] = spec.coerce(value)
        except ValueError as exc:
            problems.add((key,), value, str(exc))

    merged = {s.key: s.default for s in SETTING_SPECS} | values
    if "api_host" in values and not merged["allow_remote_api"] and not is_loopback(merged["api_host"]):
        problems.add(
            ("api_host",),
            merged["api_host"],
            'a loopback address ("127.0.0.1", "::1" or "localhost") while allow_remote_api = false; '
            "set allow_remote_api = true to listen on other interfaces",
        )
    if merged["max_cooldown_secs"] < merged["resume_cooldown_secs"]:
        problems.add(
            ("max_cooldown_secs",),
            raw.get("max_cooldown_secs", merged["max_cooldown_secs"]),
            f"at least resume_cooldown_secs ({_number_text(merged['resume_cooldown_secs'])})",
        )
    return values


def _check_tls_files(
    values: dict[str, Any],
    raw: Mapping[str, Any],
    problems: _Problems,
    *,
    check_files: bool,
    base: Path | None,
) -> None:
    """api_tls_cert and api_tls_key: both or neither, relative paths read from the config's folder; with
    check_files, each a readable regular file (else `config check` names the key and the path)."""
    cert, key = values.get("api_tls_cert", ""), values.get("api_tls_key", "")
    if bool(cert) != bool(key):
        missing, given = ("api_tls_key", "api_tls_cert") if cert else ("api_tls_cert", "api_tls_key")
        problems.add((missing,), raw.get(missing, ""), f"set together with {given} (or neither)")
        return
    for key_name in ("api_tls_cert", "api_tls_key"):
        value = values.get(key_name, "")
        if not value:
            continue
        file = _expand_path(value, base)
        values[key_name] = str(file)
        if not check_files:
            continue
        if not file.exists():
            problems.add((key_name,), value, f"an existing file; {file} does not exist")
        elif not file.is_file():
            problems.add((key_name,), value, f"a regular file; {file} is not one")
        elif not os.access(file, os.R_OK):
            problems.add((key_name,), value, f"a file this user can read; {file} is not readable")


def _validate_models(
    raw: Mapping[str, Any], problems: _Problems, *, gpu_device: int, check_files: bool, base: Path | None
) -> tuple[ModelConfig, ...]:
    models: list[ModelConfig] = []
    first_with_name: dict[str, int] = {}
    for where, entry, ok in _table_entries(raw, TABLES_BY_KEY["models"], problems):
        name = entry.get("name")
        if name is not None and name in first_with_name:
            expected = f"a unique model name (models[{first_with_name[name]}] has it too)"
            problems.add((*where, "name"), name, expected)
            continue
        if name is not None:
            first_with_name[name] = int(where[1])
        model_path = _expand_path(entry["path"], base) if "path" in entry else None
        if check_files and model_path is not None and not model_path.is_file():
            problem = (
                "a folder"
                if model_path.is_dir()
                else "not a regular file"
                if model_path.exists()
                else "missing"
            )
            problems.add(
                (*where, "path"), entry["path"], f"an existing model file ({model_path} is {problem})"
            )
        if ok and name is not None and model_path is not None:
            models.append(
                ModelConfig(
                    name=name,
                    path=model_path,
                    gpu=entry.get("gpu", gpu_device),
                    priority=entry.get("priority", 0),
                    variants=entry.get("variants", ()),
                )
            )
    for index, entry in enumerate(raw.get("models", []) if isinstance(raw.get("models"), list) else []):
        variants = entry.get("variants", []) if isinstance(entry, dict) else []
        for variant in variants if isinstance(variants, list) else []:
            if isinstance(variant, str) and (variant not in first_with_name or variant == entry.get("name")):
                expected = "the name of another model defined in a [[models]] section"
                problems.add(("models", str(index), "variants"), variant, expected)
    return tuple(models)


def _validate_servers(raw: Mapping[str, Any], problems: _Problems) -> tuple[ServerConfig, ...]:
    servers = []
    for where, entry, ok in _table_entries(raw, TABLES_BY_KEY["servers"], problems):
        kind = entry.get("kind")
        if kind is None:
            continue  # _table_entries said it is missing or wrong
        if kind in STOP_START_KEYS:
            if _check_stop_start(where, kind, entry, problems) and ok:
                servers.append(ServerConfig(**entry))
            continue
        ok = _check_keys(where, kind, entry, API_KEYS, problems) and ok
        if "url" not in entry:
            expected = (
                f'an http:// or https:// URL (required for kind = "{kind}"), e.g. "http://127.0.0.1:8188"'
            )
            problems.add((*where, "url"), MISSING, expected)
            ok = False
        bad_url = _check_url(entry["url"]) if "url" in entry else None
        if bad_url:
            problems.add((*where, "url"), entry["url"], bad_url)
        keep_alive = entry.get("keep_alive", "5m")
        if not _KEEP_ALIVE_RE.match(keep_alive):
            expected = 'a duration such as "5m", "1h", "30s", "0" or "-1"'
            problems.add((*where, "keep_alive"), keep_alive, expected)
            ok = False
        if ok and not bad_url:
            servers.append(ServerConfig(**entry))
    return tuple(servers)


def _check_keys(
    where: tuple[str, ...], kind: str, entry: Mapping[str, Any], allowed: Sequence[str], problems: _Problems
) -> bool:
    """Each key of the entry is one its kind uses (a `unit` on an Ollama entry is a mistake worth naming)."""
    ok = True
    for key in entry:
        if key not in allowed:
            problems.add((*where, key), entry[key], f'a key that kind = "{kind}" uses: {", ".join(allowed)}')
            ok = False
    return ok


def _check_stop_start(
    where: tuple[str, ...], kind: str, entry: Mapping[str, Any], problems: _Problems
) -> bool:
    """A `command` entry has a stop and a start command line that split into arguments; a `systemd` entry
    names a unit (never an option: a unit starting with "-" would be read as one)."""
    ok = _check_keys(where, kind, entry, STOP_START_KEYS[kind], problems)
    if kind == "freeze":
        if not str(entry.get("match", "")).strip():
            expected = 'an executable name or a command-line part in quotes, e.g. "ComfyUI/main.py"'
            problems.add((*where, "match"), entry.get("match", MISSING), expected)
            return False
        return ok
    if kind == "command":
        for key in ("stop", "start"):
            if key not in entry:
                expected = (
                    f'a command line in quotes (required for kind = "command"), e.g. "docker {key} comfyui"'
                )
                problems.add((*where, key), MISSING, expected)
                ok = False
                continue
            try:
                argv = shlex.split(entry[key])
            except ValueError as exc:
                problems.add((*where, key), entry[key], f"a command line with balanced quotes ({exc})")
                ok = False
                continue
            if not argv:
                problems.add((*where, key), entry[key], "a command line with a program to run")
                ok = False
        return ok
    unit = entry.get("unit")
    if unit is None:
        expected = 'a systemd unit name in quotes (required for kind = "systemd"), e.g. "comfyui.service"'
        problems.add((*where, "unit"), MISSING, expected)
        return False
    if unit.startswith("-") or not _UNIT_RE.match(unit):
        expected = 'a systemd unit name (letters, digits, ":_.\\@-"; no leading "-"), e.g. "ollama.service"'
        problems.add((*where, "unit"), unit, expected)
        return False
    return ok


def _load(
    path: Path, data: bytes, text: str, raw: dict[str, Any], *, check_files: bool, migrate: bool
) -> Settings:
    problems = _Problems(path, text)
    version = _schema_version(raw, problems)
    problems.raise_if_any()
    assert version is not None
    data_v2 = raw
    if version == 1:
        data_v2 = _migrate_v1(raw, problems)
        problems.raise_if_any()
    base = Path(os.path.abspath(path)).parent
    settings = _validate(data_v2, path, text, check_files=check_files, base=base)
    if version == 1 and migrate:
        _write_migration(path, data, _migrated_text(text, data_v2), version)
    return settings


# --- public API: loading -------------------------------------------------------------------------


def load_settings(path: Path | None = None, *, check_files: bool = True, migrate: bool = True) -> Settings:
    """The validated settings from `path` (default: the platform config file).

    A missing default file gives the defaults; a missing explicit file is an error. Every problem in the
    file is reported at once as `ConfigErrors`. `check_files` also checks that each model file exists.
    A schema 1 file is migrated (with a backup) unless `migrate` is false, which `config check` uses.
    """
    explicit = path is not None
    path = Path(path) if path is not None else paths.default_config_file()
    if not explicit and not path.exists() and not path.is_symlink():
        logger.info("no settings file at %s; using the defaults", path)
        return Settings()
    data, text, raw = _read(path)
    return _load(path, data, text, raw, check_files=check_files, migrate=migrate)


def file_schema_version(path: Path) -> int:
    """The schema version a readable settings file declares (1 for a schema 1 layout)."""
    _, text, raw = _read(path)
    problems = _Problems(path, text)
    version = _schema_version(raw, problems)
    problems.raise_if_any()
    assert version is not None
    return version


# --- public API: writing -------------------------------------------------------------------------


def default_config_text() -> str:
    """The commented default settings file shipped in the package (app/data/default-config.toml)."""
    return importlib.resources.files("app").joinpath("data/default-config.toml").read_text(encoding="utf-8")


def ensure_default_config(path: Path | None = None) -> bool:
    """Write the commented default settings file if none exists; True if it wrote one."""
    path = Path(path) if path is not None else paths.default_config_file()
    if path.exists() or path.is_symlink():
        return False
    private_dir(path.parent)  # 0700: the settings may hold API keys
    write_atomic(path, default_config_text())
    logger.info("wrote the default settings file %s", path)
    return True


def settings_to_toml(settings: Settings) -> str:
    """The effective settings as a complete TOML document (`vram-steward config show`)."""
    doc = tomlkit.document()
    doc.add("schema_version", SCHEMA_VERSION)
    for spec in SETTING_SPECS:
        doc.add(spec.key, spec.to_toml(getattr(settings, spec.key)))
    for table in TABLE_SPECS:
        entries = _table_values(settings, table.key)
        if entries:
            aot = tomlkit.aot()
            for entry in entries:
                aot.append(_new_entry(table.key, entry, settings))
            doc.add(table.key, aot)
    return tomlkit.dumps(doc)


def save_settings(settings: Settings, path: Path) -> Settings:
    """Write `settings` to `path`, editing the existing file so its comments and layout stay (a new file
    starts from the commented default). Validates first; writes atomically; keeps the file mode. A file
    that does not load is never overwritten: its ConfigErrors are raised instead. Returns what was saved,
    as loaded back."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        current = load_settings(path, check_files=False)  # raises on a broken file; migrates schema 1
        _, text, _ = _read(path)
    else:
        text = default_config_text()
        current = Settings()
    doc = tomlkit.parse(text)
    _apply(doc, current, settings)
    new_text = tomlkit.dumps(doc)
    base = Path(os.path.abspath(path)).parent
    saved = _validate(_parse(path, new_text), path, new_text, check_files=False, base=base)
    wanted = dataclasses.replace(
        settings,
        models=tuple(dataclasses.replace(m, path=_expand_path(str(m.path), base)) for m in settings.models),
    )
    if saved != wanted:
        raise ConfigError(
            path=str(path),
            key="(save)",
            value=settings,
            expected="settings that read back the same after saving (a bug: please report it)",
        )
    if new_text != text or not path.exists():
        private_dir(path.parent)  # 0700: the settings may hold API keys
        write_atomic(_real_path(path), new_text)
    return dataclasses.replace(saved, source=path)


def update_settings(path: Path | None = None, **changes: Any) -> Settings:
    """Change some settings in the file, keeping everything else (comments included): what the tray
    toggles call, e.g. `update_settings(path, auto_evict=False)`. Returns the new settings."""
    path = Path(path) if path is not None else paths.default_config_file()
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "source"]
    for key, value in changes.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigErrors(
                [ConfigError(path=str(path), key=key, value=value, expected=f"a settings key{hint}")]
            )
    current = load_settings(path, check_files=False) if (path.exists() or path.is_symlink()) else Settings()
    return save_settings(dataclasses.replace(current, **changes), path)


def add_server(path: Path | None, server: ServerConfig) -> Settings:
    """Append one `[[servers]]` entry to the settings file, keeping everything already there as written
    (comments included): what accepting a discovered app does. An entry already there is not added twice."""
    path = Path(path) if path is not None else paths.default_config_file()
    current = load_settings(path, check_files=False) if (path.exists() or path.is_symlink()) else Settings()
    if server in current.servers:
        return current
    return update_settings(path, servers=(*current.servers, server))


def add_app_rule(path: Path | None, rule: AppRule) -> Settings:
    """Save one `[[app_rules]]` entry, keeping the file as written (comments included): what "Always ignore
    this app" does. A rule with the same `match` is replaced; the same rule is not added twice."""
    path = Path(path) if path is not None else paths.default_config_file()
    current = load_settings(path, check_files=False) if (path.exists() or path.is_symlink()) else Settings()
    if rule in current.app_rules:
        return current
    kept = tuple(r for r in current.app_rules if r.match != rule.match)
    if len(kept) < len(current.app_rules):
        update_settings(path, app_rules=kept)
    return update_settings(path, app_rules=(*kept, rule))


def remove_app_rule(path: Path | None, match: str) -> Settings:
    """Remove the `[[app_rules]]` entry whose `match` is this (Undo, the dashboard's Remove); the other
    entries and the rest of the file stay as written. No such rule: the settings as they are."""
    path = Path(path) if path is not None else paths.default_config_file()
    current = load_settings(path, check_files=False) if (path.exists() or path.is_symlink()) else Settings()
    kept = tuple(r for r in current.app_rules if r.match != match)
    if len(kept) == len(current.app_rules):
        return current
    return update_settings(path, app_rules=kept)


# --- editing a tomlkit document in place ---------------------------------------------------------


def _table_values(settings: Settings, key: str) -> tuple[Any, ...]:
    values: tuple[Any, ...] = getattr(settings, key)
    return values


def _entry_fields(table: str, entry: Any, settings: Settings, *, complete: bool = False) -> dict[str, Any]:
    """The raw TOML fields of one entry; unless `complete`, without those that equal their default."""
    if table == "models":
        fields: dict[str, Any] = {
            "name": entry.name,
            "path": str(entry.path),
            "gpu": entry.gpu,
            "priority": entry.priority,
            "variants": list(entry.variants),
        }
        defaults: dict[str, Any] = {"gpu": settings.gpu_device, "priority": 0, "variants": []}
    else:
        fields = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
        defaults = {
            f.name: f.default for f in dataclasses.fields(entry) if f.default is not dataclasses.MISSING
        }
    if complete:
        return fields
    return {k: v for k, v in fields.items() if k not in defaults or v != defaults[k]}


def _new_entry(table: str, entry: Any, settings: Settings) -> tomlkit.items.Table:
    out = tomlkit.table()
    for key, value in _entry_fields(table, entry, settings).items():
        out.add(key, value)
    return out


def _apply(doc: tomlkit.TOMLDocument, current: Settings, new: Settings) -> None:
    """Set in `doc` (which holds `current`) only what differs in `new`, so the rest stays as written."""
    if doc.get("schema_version") != SCHEMA_VERSION:
        doc["schema_version"] = SCHEMA_VERSION
    for spec in SETTING_SPECS:
        value = getattr(new, spec.key)
        if value != getattr(current, spec.key):
            doc[spec.key] = spec.to_toml(value)
    for table in TABLE_SPECS:
        _apply_table(doc, table.key, current, new)


def _apply_table(doc: tomlkit.TOMLDocument, key: str, current: Settings, new: Settings) -> None:
    old_entries, new_entries = _table_values(current, key), _table_values(new, key)
    existing = doc.get(key)
    if not new_entries:
        if key in doc:
            del doc[key]
        return
    if (
        isinstance(existing, tomlkit.items.AoT)
        and len(existing) == len(old_entries) < len(new_entries)
        and tuple(new_entries[: len(old_entries)]) == tuple(old_entries)
    ):  # entries added at the end (a discovered app): the existing ones stay as written, comments included
        for entry in new_entries[len(old_entries) :]:
            existing.append(_new_entry(key, entry, new))
        return
    if isinstance(existing, tomlkit.items.AoT) and len(existing) == len(old_entries) == len(new_entries) + 1:
        # one entry removed (a rule's Undo): the others stay as written, comments included
        gone = next((i for i, entry in enumerate(new_entries) if entry != old_entries[i]), len(new_entries))
        if (*old_entries[:gone], *old_entries[gone + 1 :]) == tuple(new_entries):
            del existing[gone]
            return
    if not isinstance(existing, list) or not len(existing) == len(old_entries) == len(new_entries):
        aot = tomlkit.aot()
        for entry in new_entries:
            aot.append(_new_entry(key, entry, new))
        doc[key] = aot
        return
    for table, old, entry in zip(existing, old_entries, new_entries, strict=True):
        wanted = _entry_fields(key, entry, new)
        for name, value in _entry_fields(key, entry, new, complete=True).items():
            changed = getattr(old, name) != getattr(entry, name)
            if name in wanted and (changed or name not in table):
                table[name] = value
            elif name in table and changed:  # back to its default (an entry that changed kind): drop it
                del table[name]


# --- symlinked settings files --------------------------------------------------------------------


def _real_path(path: Path) -> Path:
    """The file a symlinked config points at (so a dotfiles symlink stays a symlink)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


__all__ = [
    "OLDEST_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "SETTING_SPECS",
    "SPECS_BY_KEY",
    "TABLES_BY_KEY",
    "TABLE_SPECS",
    "AppRule",
    "ConfigErrors",
    "ModelConfig",
    "ServerConfig",
    "SettingSpec",
    "Settings",
    "SpecKind",
    "TableSpec",
    "add_server",
    "default_config_text",
    "ensure_default_config",
    "file_schema_version",
    "load_settings",
    "save_settings",
    "settings_to_toml",
    "update_settings",
]
