"""The holder contract: what the engine needs from anything that holds VRAM on the user's behalf (the
built-in residency, the model-server adapters, and the next kinds: frozen processes, generic commands)."""

from __future__ import annotations

import concurrent.futures
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.core.errors import InvalidInput
from app.core.events import Event
from app.core.settings import Settings


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"  # configured, never loaded (or unloaded by the user)
    LOADING = "loading"
    RESIDENT = "resident"
    EVICTED = "evicted"  # freed by VRAM Steward; will be restored when the GPU is free
    WAITING = "waiting"  # wanted, but refused for lack of free VRAM: loaded when there is room (last_error)
    FROZEN = "frozen"  # a whole app checkpointed by the driver: its VRAM sits in host RAM until restored
    FAILED = "failed"  # the last load failed; see last_error


@dataclass(frozen=True)
class ModelStatus:
    name: str
    gpu: int
    size_bytes: int | None
    state: ModelState
    holder: str  # "builtin" | "ollama" | ...
    digest: str | None = None
    priority: int = 0
    last_used_at: float | None = None
    load_seconds: float | None = None
    load_bytes_per_s: float | None = None
    progress_done_bytes: int | None = None  # while LOADING
    progress_total_bytes: int | None = None
    last_error: str | None = None
    # An app with no call to load a model again (ComfyUI, InvokeAI): freed by us, it is not restored but
    # comes back on its own at the app's next use (state UNLOADED while it has not).
    comes_back_on_next_use: bool = False
    # The user keeps it out (`vram-steward freeze`): the policy never brings it back; only the user does.
    held_by_user: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "gpu": self.gpu,
            "size_bytes": self.size_bytes,
            "state": str(self.state),
            "digest": self.digest,
            "holder": self.holder,
            "priority": self.priority,
            "load_seconds": self.load_seconds,
            "load_bytes_per_s": self.load_bytes_per_s,
            "progress_done_bytes": self.progress_done_bytes,
            "progress_total_bytes": self.progress_total_bytes,
            "last_error": self.last_error,
            "comes_back_on_next_use": self.comes_back_on_next_use,
            "held_by_user": self.held_by_user,
        }


class HolderRole(enum.StrEnum):
    """What a holder's processes are to the classifier: our own (`self`: the residency host, whose VRAM is
    the models' own) or an app we manage (`managed`: a model server's runners, a frozen process)."""

    SELF = "self"
    MANAGED = "managed"


class Holder(Protocol):
    """Anything that holds VRAM on the user's behalf: the built-in residency, model servers and AI apps,
    and (later) frozen processes and generic stop/start commands. The engine calls every method from its
    worker thread only, and every method returns at once: a holder does its I/O (HTTP, a host's pipe, the
    driver's checkpoint calls) on its own threads with a deadline on the whole operation, and reports
    what happened through `poll()` in a later tick. The engine never asks which kind of holder it talks
    to: what differs between kinds is in the answers below.
    """

    name: str  # "builtin", "ollama", ... (for people and the status document; never tested by the engine)
    role: HolderRole

    def models(self) -> Sequence[ModelStatus]:
        """The last known state of every model it holds or knows (never asks anyone: no I/O)."""
        ...

    def pids(self) -> set[int]:
        """PIDs of the processes that hold VRAM for this holder, as last seen."""
        ...

    def start_load(self, model: str) -> None:
        """Start loading (or restoring) `model`. Progress and the outcome arrive through `poll()`. Raises a
        VramError at once when it can tell at once that the load cannot happen (e.g. admission)."""
        ...

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]:
        """Start freeing `models` (cancelling loads in flight); they are restored on resume. Returns what is
        already known (the models' state is EVICTED from now on); the rest arrives through `poll()`."""
        ...

    def unload(self, model: str) -> Sequence[Event]:
        """The user's unload: like evict, but the model is not restored on resume."""
        ...

    def poll(self) -> Sequence[Event]:
        """Collect what the holder's own threads finished since the last call. Never blocks."""
        ...

    def set_hold(self, reason: str | None) -> None:
        """The policy keeps the GPU free for `reason` ("game", "pause", "user"; None: not any more): a holder
        whose clients can load models behind our back (a model server) frees them again while held."""
        ...

    def verify(self, model: str) -> concurrent.futures.Future[Event]:
        """Check that what `model` holds in VRAM is intact. The future completes off the engine thread
        with the result event, or fails with a VramError (VerifyUnsupported where the holder cannot)."""
        ...

    def update_settings(self, settings: Settings) -> None:
        """Settings changed while running (applied on the engine thread)."""
        ...

    def close(self) -> Sequence[Event]:
        """Ordered shutdown: free what VRAM Steward itself holds (a server's models are the user's and stay
        as they are) and stop; bounded in time. Returns the events of what it freed."""
        ...


ModelHolder = Holder  # the name the first version used


class VerifyUnsupported(InvalidInput):
    """The holder cannot check its models' bytes (a model server owns them, not VRAM Steward)."""

    code = "verify_unsupported"


def unsupported_verify(model: str, holder: str) -> concurrent.futures.Future[Event]:
    """What `verify` returns for a holder that cannot verify."""
    future: concurrent.futures.Future[Event] = concurrent.futures.Future()
    future.set_exception(
        VerifyUnsupported(
            f"{model!r} is held by {holder}, not sealed by VRAM Steward itself, so it cannot be verified"
        )
    )
    return future
