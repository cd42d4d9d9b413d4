"""Built-in VRAM residency: admission (ledger.py), the manager that holds models for the engine
(manager.py), sealing and verifying (seal.py, digest.py), and the residency host (host/) that owns the GPU
memory in a child process per GPU. SimulatedDevice (simulated_device.py) stands in for CUDA in simulation.

Importing this package imports nothing heavy (no CuPy, no platformdirs): the spawned host imports it too.
"""
