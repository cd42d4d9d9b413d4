"""The settings as the rest of the app sees them: plain frozen dataclasses, no file format.

Reading, validating and writing the TOML file is app/core/config.py's job (it re-exports these). Keeping the
records here lets the engine, the residency host and the GPU benchmarks use them without tomlkit or
platformdirs (the residency path runs where only the driver, CuPy and NVML are installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.core.units import GiB, MiB


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path
    gpu: int  # resolved: the model's own `gpu`, or the settings' gpu_device
    priority: int = 0  # higher stays longer: under pressure the lowest priority goes first
    variants: tuple[str, ...] = ()  # smaller fallbacks, by model name, best first ("70b" -> "13b")


@dataclass(frozen=True)
class AppRule:
    match: str  # an executable name ("blender") or a Steam AppId as "steam:1091500"
    action: str  # "evict" | "ignore"


@dataclass(frozen=True)
class ServerConfig:
    """One `[[servers]]` entry: everything VRAM Steward manages besides its own models (a model server, an
    AI app, a stop/start command pair, a systemd unit), told apart by `kind`."""

    kind: str  # one of config.SERVER_KINDS: "ollama", "lm_studio", "vllm", ..., "command", "systemd"
    url: str = ""  # required for every kind with an HTTP API; unused by "command" and "systemd"
    keep_alive: str = "5m"
    api_key: str = ""  # sent as "Authorization: Bearer <api_key>" when set (LM Studio, vLLM, ...)
    # kind = "command": command lines run without a shell (split like a POSIX shell would, shlex.split)
    stop: str = ""
    start: str = ""
    match: str = ""  # its processes: an executable name, or a substring of their command line
    # kind = "systemd"
    unit: str = ""  # "comfyui.service"
    user: bool = True  # a user unit (systemctl --user); false: a system unit, through the user's own rights
    timeout_s: float = 30.0  # the longest a stop or start command (or systemctl) may take
    name: str = ""  # kind = "freeze": the app's name for people (default: its match)


@dataclass(frozen=True)
class Settings:
    gpu_device: int = 0
    allow_shared_gpu: bool = True
    reserved_system_vram: int = 2 * GiB
    headroom_percent: float = 10.0
    auto_evict: bool = True
    auto_pause_for_gaming: bool = True
    process_check_interval_secs: float = 1.0  # process-table scan for game signals
    poll_interval_secs: float = 0.1  # NVML polling while we hold VRAM
    idle_poll_interval_secs: float = 2.0  # NVML polling while we hold nothing
    pressure_threshold: int = 1 * GiB  # foreign growth above baseline that counts as pressure ...
    pressure_threshold_percent: float = 5.0  # ... or this percent of total, whichever is larger
    pressure_samples: int = 3  # consecutive samples before pressure triggers
    baseline_max_process_vram: int = 512 * MiB  # learned-baseline cap per process
    resume_cooldown_secs: float = 30.0
    max_cooldown_secs: float = 600.0
    calm_reset_secs: float = 3600.0
    thermal_pause_celsius: int | None = None  # None: off
    hold_models_on_battery: bool = True
    notifications: bool = True
    notification_coalesce_secs: float = 10.0
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    allow_remote_api: bool = False
    api_tls_cert: str = ""  # PEM certificate for the remote API ("": a self-signed one in the state dir)
    api_tls_key: str = ""  # its PEM private key
    exclusive_apps: tuple[str, ...] = ()
    vulkan_layer_socket: bool = True  # answer the optional Vulkan layer (docs/vulkan-layer.md)
    vulkan_unknown_apps: str = "ignore"  # "wait" | "ignore": Vulkan apps that are neither games nor desktop
    app_rules: tuple[AppRule, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    servers: tuple[ServerConfig, ...] = ()
    source: Path | None = field(default=None, compare=False)  # the file these came from

    def headroom_bytes(self, total_bytes: int) -> int:
        """Headroom = max(reserved_system_vram, headroom_percent of total) (DESIGN.md)."""
        return max(self.reserved_system_vram, int(total_bytes * self.headroom_percent / 100))

    def pressure_threshold_bytes(self, total_bytes: int) -> int:
        return max(self.pressure_threshold, int(total_bytes * self.pressure_threshold_percent / 100))

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)
