"""Events in words for people: the daemon's live log, notifications, the dashboard's event list."""

from __future__ import annotations

from app.core import events as ev
from app.core.units import format_bytes, format_rate


def _models(models: tuple[str, ...]) -> str:
    return f"{len(models)} model" + ("" if len(models) == 1 else "s")


def describe(event: ev.Event) -> str:
    """One line that says what happened, with numbers: "Cyberpunk 2077 started: freed 13.2 GiB (2 models)"."""
    if isinstance(event, ev.ModelsEvicted):
        freed = f"freed {format_bytes(event.freed_bytes)}" if event.freed_bytes is not None else "freed VRAM"
        why = {
            "game": f"{event.trigger} started",
            "pressure": f"{event.trigger} needs VRAM",
            "user": "Evicted on request",
            "pause": "Paused",
            "sleep": "System going to sleep",
            "thermal": f"GPU too hot ({event.trigger})",
            "battery": "On battery",
            "lost": "GPU lost",
            "dedicated": "Dedicated mode: a foreign compute job",
        }.get(event.reason, event.reason)
        return f"{why}: {freed} ({_models(event.models)}: {', '.join(event.models)}) on GPU {event.gpu}"
    if isinstance(event, ev.Resumed):
        return f"GPU {event.gpu} free again: reloading {', '.join(event.models)}"
    if isinstance(event, ev.LoadRefused):
        if event.need_bytes is not None and event.available_bytes is not None:
            return (
                f"Could not load {event.model}: need {format_bytes(event.need_bytes)}, "
                f"{format_bytes(max(event.available_bytes, 0))} free ({event.reason})"
            )
        return f"Could not load {event.model}: {event.reason}"
    if isinstance(event, ev.VramSealed):
        return (
            f"{event.model} loaded on GPU {event.gpu}: {format_bytes(event.bytes)} in {event.seconds:.1f} s "
            f"({format_rate(event.bytes_per_s)})"
            + (" (file changed since last load)" if event.file_changed else "")
        )
    if isinstance(event, ev.VramAllocated):
        return f"{event.model} resident on GPU {event.gpu} ({format_bytes(event.bytes)})"
    if isinstance(event, ev.VramDeallocated):
        residue = f", {format_bytes(event.residue_bytes)} still held" if event.residue_bytes else ""
        return f"{event.model} freed from GPU {event.gpu} ({format_bytes(event.bytes)}{residue})"
    if isinstance(event, ev.VramAllocationFailed):
        return f"Loading {event.model} failed: {event.message or event.reason}"
    if isinstance(event, ev.GameStarted):
        extra = f" (Steam AppId {event.app_id})" if event.app_id else ""
        return f"Game started: {event.name}{extra} [{event.source}]"
    if isinstance(event, ev.GameEnded):
        return f"Game ended: {event.name} [{event.source}]"
    if isinstance(event, ev.GameWarning):
        return f"{event.name} started while auto-pause for gaming is off: it may lack VRAM (Free now?)"
    if isinstance(event, ev.GpuLost):
        return f"GPU {event.gpu} lost: {event.message}"
    if isinstance(event, ev.BackendProblem):
        return f"GPU monitoring problem ({event.state}): {event.message}"
    if isinstance(event, ev.HostDied):
        models = ", ".join(event.models)
        return f"Residency host on GPU {event.gpu} died (exit {event.exit_code}); {models} evicted"
    if isinstance(event, ev.SealVerificationFailed):
        return f"{event.model} failed verification: damaged chunks {list(event.damaged_chunks)[:5]}"
    if isinstance(event, ev.SealVerified):
        return f"{event.model} verified ({event.seconds:.1f} s)"
    if isinstance(event, ev.EngineError):
        return f"Internal error in {event.where}: {event.message}"
    if isinstance(event, ev.Paused):
        return "Paused by you: models stay out of VRAM until you resume" if event.by == "user" else "Paused"
    if isinstance(event, ev.Unpaused):
        return "Resumed by you" if event.by == "user" else "Resumed"
    if isinstance(event, ev.EvictRequested):
        return "You chose Evict now" + ("" if event.gpu is None else f" on GPU {event.gpu}")
    if isinstance(event, ev.ReloadRequested):
        return "You chose Reload now" + ("" if event.gpu is None else f" on GPU {event.gpu}")
    if isinstance(event, ev.AppRuleAdded):
        who = f"{event.name} " if event.name and event.name != event.match else ""
        what = {"ignore": "ignored", "evict": "given the GPU"}.get(event.action, event.action)
        return f'Rule added: {who}(match = "{event.match}") is always {what}'
    if isinstance(event, ev.AppRuleRemoved):
        return f'Rule removed: match = "{event.match}" ({event.action}) no longer applies'
    return event.describe()
