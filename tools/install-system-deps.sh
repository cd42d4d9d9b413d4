#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that the tests and the app need, only when missing.
# Runs as root, or through sudo when available; on other systems it prints what to install.
set -euo pipefail

PACKAGES=(
  gcc            # compiles the stand-in libnvidia-ml.so.1 for the NVML tests
  g++ cmake ninja-build  # build llama.cpp's real llama-server for its test (tools/build-llama-server.sh)
  python3-venv   # `make` creates .venv
  xvfb           # a real X server for the tray and notification tests
  dbus           # private session buses in tests
  dbus-x11
  dunst          # a real notification server
  haskell-status-notifier-item-utils  # status-notifier-watcher: a tray (StatusNotifierItem) for the desktop tests
  gamemode       # the real GameMode daemon (game signal tests)
  prometheus     # promtool for the alert rules
  desktop-file-utils  # desktop-file-validate for the .desktop files
  libvulkan1 libvulkan-dev mesa-vulkan-drivers  # the Vulkan loader, headers, lavapipe: the layer's tests
  gcc-multilib   # the 32-bit build of the Vulkan layer (32-bit games)
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libegl1 libgl1 libfontconfig1 libdbus-1-3
)

if ! command -v dpkg >/dev/null 2>&1; then
  echo "note: not a Debian-based system; install the equivalents of: ${PACKAGES[*]}" >&2
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: missing Debian packages (${missing[*]}) and not root; run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
