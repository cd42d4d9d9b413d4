"""Per-application rules from a notification's buttons: "Always ignore this app" and its Undo.

A rule is saved in the settings file first (comments kept, app.core.config), then applied through the
engine's one door (`AddAppRule` / `RemoveAppRule`), which records `AppRuleAdded` / `AppRuleRemoved`; the
first becomes the confirmation notification with its Undo button. The daemon and the tray app both call
these, so a rule means the same wherever it was made.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core import config
from app.core.engine.commands import AddAppRule, EngineCommand, Outcome, RemoveAppRule
from app.core.settings import AppRule, Settings

logger = logging.getLogger(__name__)

Submit = Callable[[EngineCommand], "concurrent.futures.Future[Outcome] | Any"]


def add_rule(
    path: Path | None, match: str, submit: Submit, *, name: str = "", action: str = "ignore"
) -> Settings:
    """Save `[[app_rules]] match = "<match>"` and apply it at once; returns the settings as saved.
    Raises ConfigError (a broken file is never overwritten) or OSError; nothing is applied then."""
    rule = AppRule(match=match, action=action)
    new = config.add_app_rule(path, rule)
    submit(AddAppRule(rule, name=name))
    logger.info("%s: rule %s = %r saved in %s and applied", name or match, action, match, new.source)
    return new


def remove_rule(path: Path | None, match: str, submit: Submit) -> Settings:
    """Remove the rule whose `match` is this from the file and from the running engine."""
    new = config.remove_app_rule(path, match)
    submit(RemoveAppRule(match))
    logger.info("rule for %r removed from %s", match, new.source)
    return new


__all__ = ["add_rule", "remove_rule"]
