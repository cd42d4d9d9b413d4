"""The engine: one loop (steward) and the status document it publishes. Replay on simulated time builds a
whole runtime (app.core.wiring), so it lives beside the wiring in app/core/replay.py."""
