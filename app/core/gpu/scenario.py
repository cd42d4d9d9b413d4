"""Simulation scenarios: a TOML file that describes GPUs, the processes on them and what happens over time.

A scenario is the scripted world that `SimulatedBackend` replays (Tier 1 tests, `--simulate`). Format:

    description = "What this scenario shows"   # optional
    duration_s = 600                           # optional: how long it is meant to run

    [[gpus]]        index, name, uuid, total = "12 GiB", reserved = "256 MiB", temperature = 45,
                    utilization = 3
    [[processes]]   pid, name, gpu = 0, used = "300 MiB", kind = "compute" | "graphics" | "both"
    [[models]]      name, size = "8 GiB", gpu = 0, priority = 0 (optional: models that the simulated
                    residency holds when the app runs with --simulate or replays the scenario)
    [[timeline]]    at = 20.0, event = ..., plus the event's keys; `repeat = { every_s = 1.0, count = 600 }`
                    repeats an entry at at, at + every_s, ... (count times in all)

Timeline events and their keys:
    process_start        pid, name, gpu = 0, used = "0 B", kind = "compute"
    process_resize       pid, to, from (default: what it holds at that moment), duration_s = 0 (linear ramp)
    process_exit         pid
    gpu_lost             gpu, message (optional)
    gpu_recovered        gpu
    game_signal_start    name, source = "gamemode" | "steam" | "exclusive_app", pid, app_id (both optional)
    game_signal_end      name
    temperature          gpu, temperature, utilization (optional)

Every mistake is a ScenarioError naming the file, the entry (`timeline[3]`), the key, the value and what
was expected.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from app.core.errors import MISSING, ConfigError
from app.core.gpu.snapshot import ProcessKind
from app.core.units import SizeParseError, parse_size

GAME_SIGNAL_SOURCES = ("gamemode", "steam", "exclusive_app")
EVENT_KINDS = (
    "process_start",
    "process_resize",
    "process_exit",
    "gpu_lost",
    "gpu_recovered",
    "game_signal_start",
    "game_signal_end",
    "temperature",
)
_EVENT_KEYS: dict[str, tuple[set[str], set[str]]] = {  # event -> (required keys, optional keys)
    "process_start": ({"pid", "name"}, {"gpu", "used", "kind"}),
    "process_resize": ({"pid", "to"}, {"from", "duration_s"}),
    "process_exit": ({"pid"}, set()),
    "gpu_lost": ({"gpu"}, {"message"}),
    "gpu_recovered": ({"gpu"}, set()),
    "game_signal_start": ({"name"}, {"source", "pid", "app_id"}),
    "game_signal_end": ({"name"}, set()),
    "temperature": ({"gpu", "temperature"}, {"utilization"}),
}
_COMMON_EVENT_KEYS = {"at", "event", "repeat"}


class ScenarioError(ConfigError):
    """A scenario file that cannot be read or is not valid: names the file, entry, key, value, expected."""

    code = "scenario_error"

    def __init__(self, *, path: str, entry: str, key: str, value: object, expected: str) -> None:
        self.entry = entry
        full_key = f"{entry}.{key}" if entry and key else (entry or key)
        super().__init__(path=path, key=full_key, value=value, expected=expected)
        self.suggestions = [f"Fix {full_key} in {path} (the format is described in app/core/gpu/scenario.py)"]


@dataclass(frozen=True)
class ScenarioGpu:
    index: int
    name: str
    uuid: str
    total_bytes: int
    reserved_bytes: int  # driver-reserved; never usable by processes
    temperature_c: int | None
    utilization_percent: int | None


@dataclass(frozen=True)
class ScenarioProcess:
    """A foreign process present from the start."""

    pid: int
    name: str
    gpu: int
    used_bytes: int
    kind: ProcessKind


@dataclass(frozen=True)
class ScenarioModel:
    """A model that the simulated residency holds (the app's `--simulate` and `replay`)."""

    name: str
    gpu: int
    size_bytes: int
    priority: int = 0


@dataclass(frozen=True)
class TimelineEvent:
    """One thing that happens at `at_s` scenario seconds. Fields that the event kind does not use are None."""

    at_s: float
    event: str
    entry: str  # where it came from, for messages: "timeline[3]" or "timeline[3] (repeat 2)"
    pid: int | None = None
    name: str | None = None
    gpu: int | None = None
    used_bytes: int | None = None  # process_start
    kind: ProcessKind | None = None
    from_bytes: int | None = None  # process_resize
    to_bytes: int | None = None
    duration_s: float = 0.0
    message: str | None = None  # gpu_lost
    source: str | None = None  # game_signal_start
    app_id: str | None = None
    temperature_c: int | None = None
    utilization_percent: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    gpus: tuple[ScenarioGpu, ...]
    processes: tuple[ScenarioProcess, ...]
    timeline: tuple[TimelineEvent, ...]  # repeats expanded, sorted by time (stable)
    duration_s: float | None = None
    path: str = "<memory>"
    models: tuple[ScenarioModel, ...] = ()

    def gpu(self, index: int) -> ScenarioGpu | None:
        return next((g for g in self.gpus if g.index == index), None)


# --- where the shipped scenarios live --------------------------------------------------------------


def shipped_scenarios_dir() -> Path:
    """app/data/scenarios inside the installed package (resources/scenarios points here)."""
    return Path(str(resources.files("app").joinpath("data", "scenarios")))


def shipped_scenario_names() -> list[str]:
    folder = shipped_scenarios_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A path to a scenario file, or the bare name of a shipped one ("game-launch")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        stem = text.removesuffix(".toml")
        candidate = shipped_scenarios_dir() / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    names = ", ".join(shipped_scenario_names()) or "(none installed)"
    raise ScenarioError(
        path=text,
        entry="",
        key="(file)",
        value=text,
        expected=f"an existing scenario file, or one of the shipped scenarios: {names}",
    )


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = resolve_scenario(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            path=str(path), entry="", key="(file)", value=str(path), expected=f"a readable UTF-8 file ({exc})"
        ) from exc
    return parse_scenario(text, path=str(path), name=path.stem)


def parse_scenario(text: str, *, path: str = "<memory>", name: str = "scenario") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(
            path=path, entry="", key="(syntax)", value=MISSING, expected=f"valid TOML: {exc}"
        ) from exc
    return _Parser(path).scenario(data, name)


# --- parsing ----------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, entry: str, key: str, value: object, expected: str) -> ScenarioError:
        return ScenarioError(path=self.path, entry=entry, key=key, value=value, expected=expected)

    def scenario(self, data: Mapping[str, Any], name: str) -> Scenario:
        self.check_keys(
            "",
            data,
            required=set(),
            optional={"description", "duration_s", "gpus", "processes", "models", "timeline"},
        )
        description = self.text("", data, "description", default="")
        duration = data.get("duration_s")
        duration_s = None if duration is None else self.seconds("", data, "duration_s")
        gpus = tuple(
            self.gpu(f"gpus[{i}]", g) for i, g in enumerate(self.tables("gpus", data, required=True))
        )
        seen: set[int] = set()
        for i, g in enumerate(gpus):
            if g.index in seen:
                raise self.fail(f"gpus[{i}]", "index", g.index, "an index not used by another GPU")
            seen.add(g.index)
        processes = tuple(
            self.process(f"processes[{i}]", p, seen) for i, p in enumerate(self.tables("processes", data))
        )
        pids: set[int] = set()
        for i, p in enumerate(processes):
            if p.pid in pids:
                raise self.fail(f"processes[{i}]", "pid", p.pid, "a pid not used by another process")
            pids.add(p.pid)
        models = tuple(self.model(f"models[{i}]", m, seen) for i, m in enumerate(self.tables("models", data)))
        names: set[str] = set()
        for i, m in enumerate(models):
            if m.name in names:
                raise self.fail(f"models[{i}]", "name", m.name, "a name not used by another model")
            names.add(m.name)
        timeline: list[TimelineEvent] = []
        for i, raw in enumerate(self.tables("timeline", data)):
            timeline.extend(self.timeline_entry(f"timeline[{i}]", raw, seen))
        timeline.sort(key=lambda e: e.at_s)
        self.check_story(processes, timeline)
        return Scenario(
            name=name,
            description=description,
            gpus=gpus,
            processes=processes,
            timeline=tuple(timeline),
            duration_s=duration_s,
            path=self.path,
            models=models,
        )

    def tables(self, key: str, data: Mapping[str, Any], *, required: bool = False) -> list[Mapping[str, Any]]:
        value = data.get(key, MISSING)
        if value is MISSING:
            if required:
                raise self.fail("", key, MISSING, f"at least one [[{key}]] table")
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail("", key, value, f"an array of tables written as [[{key}]]")
        if required and not value:
            raise self.fail("", key, value, f"at least one [[{key}]] table")
        return value

    def check_keys(
        self, entry: str, table: Mapping[str, Any], *, required: set[str], optional: set[str]
    ) -> None:
        for key in sorted(required):
            if key not in table:
                raise self.fail(entry, key, MISSING, "a value (this key is required)")
        allowed = required | optional
        for key in table:
            if key not in allowed:
                raise self.fail(entry, key, table[key], f"one of the keys {', '.join(sorted(allowed))}")

    def integer(self, entry: str, table: Mapping[str, Any], key: str, *, minimum: int = 0) -> int:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(entry, key, value, f"a whole number of {minimum} or more")
        return value

    def optional_integer(self, entry: str, table: Mapping[str, Any], key: str, maximum: int) -> int | None:
        if key not in table:
            return None
        value = self.integer(entry, table, key)
        if value > maximum:
            raise self.fail(entry, key, value, f"a whole number from 0 to {maximum}")
        return value

    def text(self, entry: str, table: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise self.fail(entry, key, table.get(key, MISSING), "a non-empty string")
        return value

    def size(self, entry: str, table: Mapping[str, Any], key: str, *, default: int | None = None) -> int:
        if key not in table and default is not None:
            return default
        try:
            return parse_size(table[key])
        except SizeParseError as exc:
            raise self.fail(entry, key, table[key], f'a size such as "300 MiB" or "12 GiB" ({exc})') from exc

    def seconds(self, entry: str, table: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
        value = table[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (positive and value == 0)
        ):
            raise self.fail(
                entry,
                key,
                value,
                "a number of seconds above 0" if positive else "a number of seconds, 0 or more",
            )
        return float(value)

    def kind(self, entry: str, table: Mapping[str, Any]) -> ProcessKind:
        value = table.get("kind", "compute")
        try:
            return ProcessKind(value)
        except ValueError:
            raise self.fail(entry, "kind", value, "one of compute, graphics, both") from None

    def gpu_ref(
        self, entry: str, table: Mapping[str, Any], gpus: set[int], *, default: int | None = None
    ) -> int:
        if "gpu" not in table and default is not None:
            return default
        value = self.integer(entry, table, "gpu")
        if value not in gpus:
            raise self.fail(
                entry, "gpu", value, f"the index of a GPU in [[gpus]] ({', '.join(map(str, sorted(gpus)))})"
            )
        return value

    def gpu(self, entry: str, table: Mapping[str, Any]) -> ScenarioGpu:
        self.check_keys(
            entry,
            table,
            required={"index", "name", "total"},
            optional={"uuid", "reserved", "temperature", "utilization"},
        )
        index = self.integer(entry, table, "index")
        total = self.size(entry, table, "total")
        if total == 0:
            raise self.fail(entry, "total", table["total"], 'a size above 0, such as "12 GiB"')
        reserved = self.size(entry, table, "reserved", default=0)
        if reserved >= total:
            raise self.fail(entry, "reserved", table["reserved"], "a size below the GPU's total")
        uuid = self.text(entry, table, "uuid", default=f"GPU-simulated-{index:04d}")
        return ScenarioGpu(
            index=index,
            name=self.text(entry, table, "name"),
            uuid=uuid,
            total_bytes=total,
            reserved_bytes=reserved,
            temperature_c=self.optional_integer(entry, table, "temperature", 150),
            utilization_percent=self.optional_integer(entry, table, "utilization", 100),
        )

    def process(self, entry: str, table: Mapping[str, Any], gpus: set[int]) -> ScenarioProcess:
        self.check_keys(entry, table, required={"pid", "name", "used"}, optional={"gpu", "kind"})
        return ScenarioProcess(
            pid=self.integer(entry, table, "pid", minimum=1),
            name=self.text(entry, table, "name"),
            gpu=self.gpu_ref(entry, table, gpus, default=min(gpus)),
            used_bytes=self.size(entry, table, "used"),
            kind=self.kind(entry, table),
        )

    def model(self, entry: str, table: Mapping[str, Any], gpus: set[int]) -> ScenarioModel:
        self.check_keys(entry, table, required={"name", "size"}, optional={"gpu", "priority"})
        priority = table.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise self.fail(entry, "priority", priority, "a whole number (higher stays longer)")
        return ScenarioModel(
            name=self.text(entry, table, "name"),
            gpu=self.gpu_ref(entry, table, gpus, default=min(gpus)),
            size_bytes=self.size(entry, table, "size"),
            priority=priority,
        )

    def timeline_entry(self, entry: str, table: Mapping[str, Any], gpus: set[int]) -> list[TimelineEvent]:
        if "event" not in table:
            raise self.fail(entry, "event", MISSING, f"one of {', '.join(EVENT_KINDS)}")
        kind = table["event"]
        if kind not in _EVENT_KEYS:
            raise self.fail(entry, "event", kind, f"one of {', '.join(EVENT_KINDS)}")
        required, optional = _EVENT_KEYS[kind]
        self.check_keys(entry, table, required=required | {"at"}, optional=optional | _COMMON_EVENT_KEYS)
        at_s = self.seconds(entry, table, "at")
        template = self.event_fields(entry, kind, table, gpus)
        every_s, count = self.repeat(entry, table)
        events = []
        for k in range(count):
            label = entry if count == 1 else f"{entry} (repeat {k})"
            events.append(TimelineEvent(at_s=at_s + k * every_s, event=kind, entry=label, **template))
        return events

    def repeat(self, entry: str, table: Mapping[str, Any]) -> tuple[float, int]:
        if "repeat" not in table:
            return 0.0, 1
        value = table["repeat"]
        if not isinstance(value, dict):
            raise self.fail(entry, "repeat", value, "a table such as { every_s = 1.0, count = 600 }")
        self.check_keys(f"{entry}.repeat", value, required={"every_s", "count"}, optional=set())
        every_s = self.seconds(f"{entry}.repeat", value, "every_s", positive=True)
        count = self.integer(f"{entry}.repeat", value, "count", minimum=1)
        if count > 100_000:
            raise self.fail(f"{entry}.repeat", "count", count, "at most 100000 repetitions")
        return every_s, count

    def event_fields(self, entry: str, kind: str, table: Mapping[str, Any], gpus: set[int]) -> dict[str, Any]:
        if kind == "process_start":
            return {
                "pid": self.integer(entry, table, "pid", minimum=1),
                "name": self.text(entry, table, "name"),
                "gpu": self.gpu_ref(entry, table, gpus, default=min(gpus)),
                "used_bytes": self.size(entry, table, "used", default=0),
                "kind": self.kind(entry, table),
            }
        if kind == "process_resize":
            return {
                "pid": self.integer(entry, table, "pid", minimum=1),
                "to_bytes": self.size(entry, table, "to"),
                "from_bytes": self.size(entry, table, "from") if "from" in table else None,
                "duration_s": self.seconds(entry, table, "duration_s") if "duration_s" in table else 0.0,
            }
        if kind == "process_exit":
            return {"pid": self.integer(entry, table, "pid", minimum=1)}
        if kind == "gpu_lost":
            message = self.text(entry, table, "message") if "message" in table else None
            return {"gpu": self.gpu_ref(entry, table, gpus), "message": message}
        if kind == "gpu_recovered":
            return {"gpu": self.gpu_ref(entry, table, gpus)}
        if kind == "game_signal_start":
            source = table.get("source", "gamemode")
            if source not in GAME_SIGNAL_SOURCES:
                raise self.fail(entry, "source", source, f"one of {', '.join(GAME_SIGNAL_SOURCES)}")
            app_id = table.get("app_id")
            if app_id is not None and (isinstance(app_id, bool) or not isinstance(app_id, (str, int))):
                raise self.fail(entry, "app_id", app_id, 'a Steam AppId such as "1091500"')
            return {
                "name": self.text(entry, table, "name"),
                "source": source,
                "pid": self.integer(entry, table, "pid", minimum=1) if "pid" in table else None,
                "app_id": None if app_id is None else str(app_id),
            }
        if kind == "game_signal_end":
            return {"name": self.text(entry, table, "name")}
        # temperature
        return {
            "gpu": self.gpu_ref(entry, table, gpus),
            "temperature_c": self.optional_integer(entry, table, "temperature", 150),
            "utilization_percent": self.optional_integer(entry, table, "utilization", 100),
        }

    def check_story(self, processes: tuple[ScenarioProcess, ...], timeline: list[TimelineEvent]) -> None:
        """The timeline must make sense in time order: a process starts before it resizes or exits, etc."""
        alive: set[int | None] = {p.pid for p in processes}
        signals: set[str | None] = set()
        lost: set[int | None] = set()
        for e in timeline:
            if e.event == "process_start" and e.pid in alive:
                raise self.fail(
                    e.entry, "pid", e.pid, f"a pid not running at {e.at_s:g} s (it is already running)"
                )
            if e.event in ("process_resize", "process_exit") and e.pid not in alive:
                raise self.fail(e.entry, "pid", e.pid, f"the pid of a process running at {e.at_s:g} s")
            if e.event == "game_signal_start" and e.name in signals:
                raise self.fail(e.entry, "name", e.name, f"a game signal not already active at {e.at_s:g} s")
            if e.event == "game_signal_end" and e.name not in signals:
                raise self.fail(e.entry, "name", e.name, f"the name of a game signal active at {e.at_s:g} s")
            if e.event == "gpu_lost" and e.gpu in lost:
                raise self.fail(e.entry, "gpu", e.gpu, f"a GPU that is not already lost at {e.at_s:g} s")
            if e.event == "gpu_recovered" and e.gpu not in lost:
                raise self.fail(e.entry, "gpu", e.gpu, f"a GPU that is lost at {e.at_s:g} s")
            if e.event == "process_start":
                alive.add(e.pid)
            elif e.event == "process_exit":
                alive.discard(e.pid)
            elif e.event == "game_signal_start":
                signals.add(e.name)
            elif e.event == "game_signal_end":
                signals.discard(e.name)
            elif e.event == "gpu_lost":
                lost.add(e.gpu)
            elif e.event == "gpu_recovered":
                lost.discard(e.gpu)
