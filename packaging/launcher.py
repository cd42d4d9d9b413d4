"""The bundle's entry point (PyInstaller starts this script): the same `main` as `vram-steward`."""

import sys

from app.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
