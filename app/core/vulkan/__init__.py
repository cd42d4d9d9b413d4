"""The optional Vulkan layer (docs/vulkan-layer.md): building and installing it (build.py, install.py) and the
engine's side of it, a Unix socket where the layer reports each vkCreateDevice and waits for our answer
(report.py, verdict.py, server.py, signals.py). The layer's C source ships in app/data/vulkan_layer."""
