#!/usr/bin/env bash
# Remove what packaging/install.sh installed for this user, and the autostart entry the tray may have
# written. Your settings, audit log and logs stay, unless you pass --purge.
#
#   packaging/uninstall.sh [--purge]
set -euo pipefail

PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
  *) echo "error: unknown option $1 (expected --purge or nothing)" >&2; exit 2 ;;
esac

LIB_DIR="$HOME/.local/lib/vram-steward"
BIN_DIR="$HOME/.local/bin"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}"
STATE_HOME="${XDG_STATE_HOME:-$HOME/.local/state}"
ICONS_DIR="$DATA_HOME/icons/hicolor"
MANIFEST="$LIB_DIR/.installed-dirs"

removed=0
remove() {
  local path="$1"
  if [ -e "$path" ] || [ -L "$path" ]; then
    rm -rf -- "$path"
    echo "removed $path"
    removed=$((removed + 1))
  fi
}

# The launcher only if it is ours (a symlink into the installed bundle).
launcher="$BIN_DIR/vram-steward"
if [ -L "$launcher" ] && [ "$(readlink "$launcher")" = "$LIB_DIR/vram-steward" ]; then
  remove "$launcher"
elif [ -e "$launcher" ]; then
  echo "note: left $launcher alone: it is not the launcher install.sh wrote (a symlink to $LIB_DIR)" >&2
fi
remove "$DATA_HOME/applications/vram-steward.desktop"
for size in 48 128 256; do
  remove "$ICONS_DIR/${size}x${size}/apps/vram-steward.png"
done
remove "$ICONS_DIR/scalable/apps/vram-steward.svg"
if [ -e "$CONFIG_HOME/autostart/vram-steward.desktop" ]; then
  remove "$CONFIG_HOME/autostart/vram-steward.desktop"
  rmdir -- "$CONFIG_HOME/autostart" 2>/dev/null || true  # the tray made it for ours: gone if now empty
fi

created=()
if [ -f "$MANIFEST" ]; then
  mapfile -t created < "$MANIFEST"
fi
remove "$LIB_DIR"

if [ "$PURGE" = 1 ]; then
  remove "$CONFIG_HOME/vram-steward"
  remove "$STATE_HOME/vram-steward"  # the audit log, the API token, and the logs (in log/)
  remove "${XDG_CACHE_HOME:-$HOME/.cache}/vram-steward"
fi

# The folders install.sh had to create, deepest first, each only if nothing else lives there now.
for dir in "${created[@]}"; do
  [ -n "$dir" ] && [ -d "$dir" ] && rmdir -- "$dir" 2>/dev/null || true
done

if [ "$removed" = 0 ]; then
  echo "VRAM Steward was not installed for ${USER:-this user} (nothing to remove)"
else
  echo "VRAM Steward uninstalled."
  if [ "$PURGE" = 0 ] && [ -d "$CONFIG_HOME/vram-steward" ]; then
    echo "  your settings stay in $CONFIG_HOME/vram-steward (remove them with: $0 --purge)"
  fi
fi
