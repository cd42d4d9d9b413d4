"""The residency host: the process (one per GPU) that owns the CUDA context and the model buffers.

protocol.py: the pipe messages; process.py: the serve loop and the launchers (spawned process, or a thread
in simulation); cuda_device.py: the only module that imports CuPy, loaded inside the host process only.
"""
