"""VRAM Steward: keeps local LLMs resident in VRAM while the GPU is free; frees it when a game needs it."""

__version__ = "0.1.0"
