#!/usr/bin/env bash
# Build the one-dir bundle dist/vram-steward/ with PyInstaller (`make bundle`), then run its self-test.
#
#   packaging/build.sh [--dist DIR] [--work DIR] [--no-self-test]
#
# Uses the project's .venv (PYTHON=... to use another interpreter that has the app's dependencies and
# pyinstaller). Takes a few minutes: CuPy and PySide6 are large.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DIST="$ROOT/dist"
WORK="$ROOT/build/pyinstaller"
SELF_TEST=1

while [ $# -gt 0 ]; do
  case "$1" in
    --dist) DIST="$(realpath -m "$2")"; shift 2 ;;
    --work) WORK="$(realpath -m "$2")"; shift 2 ;;
    --no-self-test) SELF_TEST=0; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (expected --dist DIR, --work DIR or --no-self-test)" >&2; exit 2 ;;
  esac
done

if [ ! -x "$PYTHON" ]; then
  echo "error: no Python at $PYTHON; run \`make venv\` first, or set PYTHON=/path/to/python" >&2
  exit 1
fi
if ! "$PYTHON" -c "import PyInstaller" 2>/dev/null; then
  echo "error: PyInstaller is not installed in $PYTHON; run: $PYTHON -m pip install 'pyinstaller>=6.10'" >&2
  exit 1
fi

cd "$ROOT"
start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$DIST" --workpath "$WORK" packaging/vram-steward.spec
echo "built $DIST/vram-steward/vram-steward in $(( $(date +%s) - start )) s ($(du -sh "$DIST/vram-steward" | cut -f1))"

if [ "$SELF_TEST" = 1 ]; then
  QT_QPA_PLATFORM=offscreen "$DIST/vram-steward/vram-steward" --self-test
fi
