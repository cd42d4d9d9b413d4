"""The role each GPU process plays for the contention policy (see DESIGN.md, "Contention policy")."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    SELF = "self"  # our app and its residency hosts: the VRAM we may free
    MANAGED = "managed"  # model-server processes we manage (e.g. Ollama's runners)
    DESKTOP = "desktop"  # display server, compositor, browsers, the learned baseline, per-app "ignore" rules
    GAME = "game"  # named by a game signal, or a per-app "evict" rule
    OTHER = "other"  # everything else: foreign, and watched for pressure
