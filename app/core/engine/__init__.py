"""The engine: one loop (steward), the status document it publishes, and replay on simulated time."""
