"""Contention policy: classification of GPU processes, game signals, the eviction/resume state machine.

Import from the modules themselves (e.g. `app.core.policy.signals`); this package re-exports nothing.
"""
