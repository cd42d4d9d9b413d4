"""Which engine events become desktop notifications, and their words: title, body, buttons (pure, no I/O).

A notification says what happened with numbers ("Cyberpunk 2077 started: freed 13.2 GiB (2 models)") and
offers what the user can do about it. Errors say where the log is. Events the user caused themselves
(Pause, Evict now) and routine ones (a model loaded) make no notification: the tray shows them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from app.core import events as ev
from app.core import paths
from app.core.policy.classify import executable_name
from app.core.units import format_bytes

# Action keys: what a button asks for. The caller maps them to engine commands (see notify.py).
ACTION_RESUME = "resume"
ACTION_SHOW = "show"  # open the dashboard
ACTION_EVICT_NOW = "evict_now"
IGNORE_APP_PREFIX = "ignore_app:"  # followed by what the rule matches: "<executable>" or "steam:<AppId>"
REMOVE_RULE_PREFIX = "remove_rule:"  # followed by the `match` of the rule to remove (Undo)
MANAGE_APP_PREFIX = "manage_app:"  # followed by "<kind> <url>" of a discovered app (events.AppFound)
FREEZE_APP_PREFIX = "freeze_app:"  # followed by an executable name: freeze it while a game runs

MAX_BURST_LINES = 3  # earlier titles a merged burst lists before "and N more"


class Urgency(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    CRITICAL = "critical"


@dataclass(frozen=True)
class NotificationAction:
    label: str  # the button's text, "Resume now"
    key: str  # what it asks for: "resume", "show", "evict_now", "ignore_app:<name>"


@dataclass(frozen=True)
class NotificationText:
    title: str
    body: str
    coalesce_key: str  # bursts of the same key within the coalescing window become one notification
    actions: tuple[NotificationAction, ...] = ()
    urgency: Urgency = Urgency.NORMAL
    default_action: str | None = ACTION_SHOW  # what clicking the notification itself asks for
    burst_size: int = 1  # how many events this notification stands for


RESUME_NOW = NotificationAction("Resume now", ACTION_RESUME)
OPEN_DASHBOARD = NotificationAction("Open dashboard", ACTION_SHOW)
FREE_NOW = NotificationAction("Free now", ACTION_EVICT_NOW)


def ignore_app_action(match: str) -> NotificationAction:
    return NotificationAction("Always ignore this app", IGNORE_APP_PREFIX + match)


def rule_match(exe: str | None, app_id: str | None) -> str | None:
    """What a per-app rule for this application matches (app.core.policy.classify.match_app_rule):
    "steam:<AppId>" for a Steam game, else its executable's name ("cyberpunk2077"); None when neither is
    known (a display name is never a rule: it matches nothing)."""
    if app_id:
        return f"steam:{app_id}"
    return executable_name(exe) or None


def rule_subject(event: ev.Event, match: str) -> str:
    """The application a rule from this event's notification is about, for people."""
    if isinstance(event, ev.ModelsEvicted) and event.reason == "game":
        return event.trigger
    if isinstance(event, ev.GameWarning):
        return event.name
    return match


def _count(models: Sequence[str]) -> str:
    return f"{len(models)} model" + ("" if len(models) == 1 else "s")


def _names(models: Sequence[str]) -> str:
    return ", ".join(models) if models else "no models"


def format_duration(seconds: float) -> str:
    """For people: "45 s", "3 min", "1 h 5 min"."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def _log_line(log_path: Path | None) -> str:
    return f"Details in the log: {log_path if log_path is not None else paths.log_file()}"


# Why models were evicted -> the start of the title. Reasons the user caused make no notification.
_QUIET_EVICTION_REASONS = frozenset({"user", "pause", "sleep", "lost"})  # "lost": GpuLost says it


def _evicted(event: ev.ModelsEvicted) -> NotificationText | None:
    if event.reason in _QUIET_EVICTION_REASONS:
        return None
    freed = f"freed {format_bytes(event.freed_bytes)}" if event.freed_bytes is not None else "freed VRAM"
    what = f"{freed} ({_count(event.models)})"
    actions: tuple[NotificationAction, ...] = (RESUME_NOW, OPEN_DASHBOARD)
    match = rule_match(event.trigger_exe, event.trigger_app_id)  # a rule matches the app, never the text
    ignore = (ignore_app_action(match),) if match else ()
    if event.reason == "game":
        title = f"{event.trigger} started: {what}"
        body = f"{_names(event.models)} left GPU {event.gpu}. They come back when the game ends."
        actions = (RESUME_NOW, *ignore, OPEN_DASHBOARD)
    elif event.reason == "pressure":
        title = f"{event.trigger} needs VRAM: {what}"
        body = f"{_names(event.models)} left GPU {event.gpu}. They come back when there is room again."
        actions = (RESUME_NOW, *ignore, OPEN_DASHBOARD)
        if event.trigger_exe:  # a compute app we could freeze for games instead of losing our models to it
            actions = (
                *actions,
                NotificationAction("Freeze it while I game", FREEZE_APP_PREFIX + event.trigger_exe),
            )
    elif event.reason == "thermal":
        title = f"GPU {event.gpu} too hot: {what}"
        body = f"{_names(event.models)} left the GPU ({event.trigger}). They come back when it cools down."
    elif event.reason == "battery":
        title = f"On battery: {what}"
        body = f"{_names(event.models)} left GPU {event.gpu}. They come back on mains power."
    else:
        title = f"Models evicted ({event.reason}): {what}"
        body = f"{_names(event.models)} left GPU {event.gpu} ({event.trigger})."
    return NotificationText(title=title, body=body, coalesce_key=event.kind, actions=actions)


def _load_refused(event: ev.LoadRefused) -> NotificationText:
    if event.need_bytes is not None and event.available_bytes is not None:
        title = (
            f"Could not load {event.model}: need {format_bytes(event.need_bytes)}, "
            f"{format_bytes(max(event.available_bytes, 0))} free"
        )
    else:
        title = f"Could not load {event.model}"
    if event.reason == "insufficient_vram":
        body = (
            f"Not enough free VRAM on GPU {event.gpu}. Close applications that use the GPU, "
            "or load a smaller or more quantized variant."
        )
    elif event.reason == "dedicated":
        body = f"Dedicated mode: another compute job is on GPU {event.gpu}; it loads when that job ends."
    else:
        body = f"GPU {event.gpu}: {event.reason.replace('_', ' ')}."
    return NotificationText(
        title=title, body=body, coalesce_key=event.kind, actions=(OPEN_DASHBOARD,), urgency=Urgency.NORMAL
    )


def _error(title: str, what: str, event: ev.Event, log_path: Path | None) -> NotificationText:
    return NotificationText(
        title=title,
        body=f"{what}\n{_log_line(log_path)}",
        coalesce_key=event.kind,
        actions=(OPEN_DASHBOARD,),
        urgency=Urgency.CRITICAL,
    )


def notification_for(event: ev.Event, *, log_path: Path | None = None) -> NotificationText | None:
    """The notification an event deserves, or None. `log_path` defaults to paths.log_file()."""
    if isinstance(event, ev.ModelsEvicted):
        return _evicted(event)
    if isinstance(event, ev.Resumed):
        return NotificationText(
            title="GPU free again: models reloaded",
            body=(
                f"Reloading {_names(event.models)} on GPU {event.gpu} "
                f"(out for {format_duration(event.after_s)})."
            ),
            coalesce_key=event.kind,
            urgency=Urgency.LOW,
        )
    if isinstance(event, ev.LoadRefused):
        return _load_refused(event)
    if isinstance(event, ev.VramDeallocated) and event.reason == "frozen":
        return NotificationText(
            title=f"{event.model} frozen: {format_bytes(event.bytes)} moved to RAM",
            body=f"It resumes where it was when GPU {event.gpu} is free again (`vram-steward thaw` now).",
            coalesce_key="frozen",
            urgency=Urgency.LOW,
        )
    if isinstance(event, ev.GameWarning):
        return NotificationText(
            title=f"{event.name} started: it may lack VRAM",
            body=(
                f"Auto-pause for gaming is off, so your models stay on GPU {event.gpu} while there is room. "
                "If the game needs their VRAM, they are freed then (as for any other app); Free now "
                "gives it all the VRAM at once. They come back when it ends."
            ),
            coalesce_key=event.kind,
            actions=(FREE_NOW, OPEN_DASHBOARD),
        )
    if isinstance(event, ev.VramSealed):
        if not event.file_changed:
            return None
        return NotificationText(
            title=f"{event.model} loaded: its file changed",
            body=f"The file of {event.model} changed since its last load (new digest {event.digest[:12]}).",
            coalesce_key=event.kind,
        )
    if isinstance(event, ev.VramAllocationFailed):
        if event.reason == "insufficient_vram":
            return None  # LoadRefused says it, with the numbers
        return _error(f"Loading {event.model} failed", event.message or event.reason, event, log_path)
    if isinstance(event, ev.GpuLost):
        return _error(f"GPU {event.gpu} lost", event.message, event, log_path)
    if isinstance(event, ev.BackendProblem):
        # Known and lasting (no driver, no NVML): said once, not sticky; the tray and dashboard keep saying it
        return replace(
            _error("GPU monitoring problem", event.message, event, log_path), urgency=Urgency.NORMAL
        )
    if isinstance(event, ev.AppRuleAdded):
        return _rule_added(event)
    if isinstance(event, ev.HostDied):
        code = "unknown" if event.exit_code is None else str(event.exit_code)
        what = f"{_names(event.models)} left VRAM (exit code {code}); they are reloaded when possible."
        return _error(f"Model host on GPU {event.gpu} stopped", what, event, log_path)
    if isinstance(event, ev.SealVerificationFailed):
        what = (
            f"{len(event.damaged_chunks)} damaged chunk(s) in VRAM on GPU {event.gpu}. Unload and reload it; "
            "check the GPU for memory errors (nvidia-smi -q -d ECC)."
        )
        return _error(f"{event.model} failed verification", what, event, log_path)
    if isinstance(event, ev.EngineError):
        return _error(
            "VRAM Steward hit an internal error", f"In {event.where}: {event.message}", event, log_path
        )
    if isinstance(event, ev.AppFound):
        return _app_found(event)
    return None


def _rule_added(event: ev.AppRuleAdded) -> NotificationText:
    """The confirmation of "Always ignore this app", with Undo."""
    who = event.name or event.match
    if event.action == "ignore":
        title = f"{who} will be ignored"
        what = "VRAM Steward no longer frees VRAM for it."
    else:
        title = f"{who} will always get the GPU"
        what = "VRAM Steward frees VRAM whenever it runs."
    return NotificationText(
        title=title,
        body=f'Rule saved: match = "{event.match}", action = "{event.action}". {what}',
        coalesce_key=f"{event.kind}:{event.match}",
        actions=(NotificationAction("Undo", REMOVE_RULE_PREFIX + event.match), OPEN_DASHBOARD),
    )


def _app_found(event: ev.AppFound) -> NotificationText:
    return NotificationText(
        title=f"Found {event.display_name} on port {event.port} - manage it while you game?",
        body=(
            f"VRAM Steward can free what {event.display_name} holds when a game starts "
            "and bring it back after."
        ),
        coalesce_key=f"{event.kind}:{event.url}",
        actions=(NotificationAction("Manage it", f"{MANAGE_APP_PREFIX}{event.server_kind} {event.url}"),),
        urgency=Urgency.LOW,
    )


def merge_burst(texts: Sequence[NotificationText]) -> NotificationText:
    """One notification for a burst of the same kind: the latest one, saying how many more there were.

    The buttons are the latest one's (they act on the latest event)."""
    if not texts:
        raise ValueError("merge_burst needs at least one notification")
    total = sum(t.burst_size for t in texts)
    last = texts[-1]
    if total == 1:
        return last
    more = total - last.burst_size
    earlier = [t.title for t in texts[:-1]]
    shown = earlier[-MAX_BURST_LINES:]
    lines = "\n".join(f"• {title}" for title in shown)
    rest = more - len(shown)
    tail = f"\n…and {rest} earlier" if rest > 0 else ""
    return replace(
        last,
        title=f"{last.title} (and {more} more)",
        body=f"{last.body}\nAlso:\n{lines}{tail}",
        burst_size=total,
    )
