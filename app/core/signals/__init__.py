"""Watchers that produce game and sleep signals: GameMode and logind (D-Bus), Steam, exclusive apps.

The signal types themselves (GameSignal, GameSignalSource) are pure and live in app.core.policy.signals."""
