#!/usr/bin/env bash
# Install the one-dir bundle for this user (no root, no pip):
#   ~/.local/lib/vram-steward/                      the bundle
#   ~/.local/bin/vram-steward                       a symlink to its executable
#   ~/.local/share/applications/vram-steward.desktop
#   ~/.local/share/icons/hicolor/{48x48,128x128,256x256,scalable}/apps/vram-steward.{png,svg}
#
#   packaging/install.sh [BUNDLE_DIR]     (default: dist/vram-steward, built by `make bundle`)
#
# Installing again replaces the previous installation. packaging/uninstall.sh removes exactly these files
# (and the folders this script had to create); your settings stay unless you pass it --purge.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
BUNDLE="${1:-}"
if [ -z "$BUNDLE" ]; then
  for candidate in "$HERE/../dist/vram-steward" "$HERE/vram-steward"; do
    if [ -x "$candidate/vram-steward" ]; then BUNDLE="$candidate"; break; fi
  done
fi
if [ -z "$BUNDLE" ] || [ ! -x "$BUNDLE/vram-steward" ]; then
  echo "error: no bundle found at ${BUNDLE:-$HERE/../dist/vram-steward} (expected an executable vram-steward" \
       "inside); build it with \`make bundle\` or pass the bundle folder: $0 path/to/vram-steward" >&2
  exit 1
fi
BUNDLE="$(cd "$BUNDLE" && pwd)"
RESOURCES="$BUNDLE/_internal/resources"
ICONS="$BUNDLE/_internal/app/data/icons"  # where app/core/resources.py finds them too
for needed in "$RESOURCES/vram-steward.desktop" "$ICONS/vram-steward.svg"; do
  if [ ! -f "$needed" ]; then
    echo "error: $needed is missing: the bundle is incomplete; rebuild it with \`make bundle\`" >&2
    exit 1
  fi
done

LIB_DIR="$HOME/.local/lib/vram-steward"
BIN_DIR="$HOME/.local/bin"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
APPS_DIR="$DATA_HOME/applications"
ICONS_DIR="$DATA_HOME/icons/hicolor"
MANIFEST_NAME=".installed-dirs"  # folders this script created, for uninstall.sh (deepest first)
SIZES=(48 128 256)

if [ "$(cd "$BUNDLE/.." && pwd)/$(basename "$BUNDLE")" = "$LIB_DIR" ]; then
  echo "error: $BUNDLE is already the installed copy; install from the built bundle (dist/vram-steward)" >&2
  exit 1
fi

# Folders created now (or by an earlier install) are recorded so that uninstall leaves no empty ones behind.
created=()
if [ -f "$LIB_DIR/$MANIFEST_NAME" ]; then
  mapfile -t created < "$LIB_DIR/$MANIFEST_NAME"
fi
make_dir() {
  local dir="$1" missing=() d="$1"
  while [ ! -e "$d" ]; do missing+=("$d"); d="$(dirname "$d")"; done
  mkdir -p "$dir"
  local m
  for m in "${missing[@]}"; do created+=("$m"); done
}

launcher="$BIN_DIR/vram-steward"
if { [ -e "$launcher" ] || [ -L "$launcher" ]; } && [ "$(readlink "$launcher" || true)" != "$LIB_DIR/vram-steward" ]; then
  echo "error: $launcher exists and is not this installer's launcher (a pip --user install?);" \
       "remove it first (pip uninstall vram-steward, or delete the file), then run $0 again" >&2
  exit 1
fi

make_dir "$(dirname "$LIB_DIR")"
make_dir "$BIN_DIR"
make_dir "$APPS_DIR"
for size in "${SIZES[@]}"; do make_dir "$ICONS_DIR/${size}x${size}/apps"; done
make_dir "$ICONS_DIR/scalable/apps"

# The bundle: copy beside, then swap, so a failed copy never leaves a half installation.
staging="$LIB_DIR.new.$$"
trap 'rm -rf "$staging"' EXIT
cp -a "$BUNDLE/." "$staging/"
rm -rf "$LIB_DIR"
mv "$staging" "$LIB_DIR"
trap - EXIT
# Deepest first and without duplicates: the order uninstall.sh removes them in.
printf '%s\n' "${created[@]}" | awk 'NF && !seen[$0]++' | awk '{ print length($0) "\t" $0 }' \
  | sort -rn | cut -f2- > "$LIB_DIR/$MANIFEST_NAME"

ln -sfn "$LIB_DIR/vram-steward" "$launcher"

# The menu entry names the launcher by absolute path: ~/.local/bin is not on every desktop session's PATH.
sed -e "s|^Exec=vram-steward|Exec=$launcher|" -e "s|^TryExec=vram-steward|TryExec=$launcher|" \
  "$RESOURCES/vram-steward.desktop" > "$APPS_DIR/vram-steward.desktop.tmp"
mv "$APPS_DIR/vram-steward.desktop.tmp" "$APPS_DIR/vram-steward.desktop"

for size in "${SIZES[@]}"; do
  install -m 0644 "$ICONS/vram-steward-$size.png" "$ICONS_DIR/${size}x${size}/apps/vram-steward.png"
done
install -m 0644 "$ICONS/vram-steward.svg" "$ICONS_DIR/scalable/apps/vram-steward.svg"

echo "installed VRAM Steward into $LIB_DIR"
echo "  start it from your applications menu, or run: $launcher"
case ":$PATH:" in
  *":$BIN_DIR:"*) ;;
  *) echo "  note: $BIN_DIR is not on your PATH; add it to run \`vram-steward\` by name" ;;
esac
echo "  check it: $launcher --self-test"
