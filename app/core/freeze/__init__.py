"""Freezing whole CUDA processes through the driver's checkpoint API (driver r570+, Linux): their device
memory moves to host RAM and the VRAM is freed; restored later, they carry on untouched. Only this package
calls the driver's checkpoint entry points (DESIGN.md, "Rules of the house")."""
