#!/usr/bin/env bash
# Builds llama.cpp's real, unmodified `llama-server` (CPU only) for the tests that drive a real model server
# (tests/core/servers/test_real_llama_server.py). The source is the llama.cpp tree vendored in
# llama-cpp-python's source distribution on PyPI, pinned by version and SHA-256 below.
#
# The build is cached outside the checkout and made once per machine (7 to 12 minutes on 2 busy cores):
#   ${VRAM_STEWARD_TEST_CACHE:-${XDG_CACHE_HOME:-~/.cache}/vram-steward-tests}/llama-server-<version>/bin/llama-server
# A lock makes concurrent runs wait for one build; the finished folder appears atomically, so a half-done build
# is never taken for a finished one.
#
# Usage: tools/build-llama-server.sh          build if missing, then print the binary's path
#        tools/build-llama-server.sh --path   print where the binary is (or would be); build nothing
# Needs: cmake, ninja, g++ (tools/install-system-deps.sh), and pip reaching PyPI for the first build.
# Set PYTHON to the interpreter whose pip downloads the source (default: python3).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
SDIST="llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

cache=${VRAM_STEWARD_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vram-steward-tests}
final="$cache/llama-server-${LLAMA_CPP_PYTHON_VERSION}"
binary="$final/bin/llama-server"

if [ "${1:-}" = "--path" ]; then
  echo "$binary"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--path]" >&2; exit 2; }

usable() { [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; }
if usable; then
  echo "$binary"
  exit 0
fi

for tool in cmake ninja g++; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "error: $tool is missing: run tools/install-system-deps.sh (or apt-get install cmake ninja-build g++)" >&2
    exit 1
  }
done

mkdir -p "$cache"
exec 9>"$cache/llama-server-${LLAMA_CPP_PYTHON_VERSION}.lock"
flock 9
if usable; then # another run built it while this one waited for the lock
  echo "$binary"
  exit 0
fi

work="$cache/llama-server-${LLAMA_CPP_PYTHON_VERSION}.work"
log="$cache/llama-server-${LLAMA_CPP_PYTHON_VERSION}.build.log"
rm -rf "$work" "$final"
mkdir -p "$work"
: >"$log"
fail() {
  echo "error: building llama-server failed ($1); last lines of $log:" >&2
  tail -n 25 "$log" >&2
  exit 1
}

echo "building llama.cpp's llama-server (llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION}, CPU only) into $final;" \
  "this takes 5 to 15 minutes, once per machine" >&2
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d "$work" >>"$log" 2>&1 || fail "pip download"
echo "${SDIST_SHA256}  $work/$SDIST" | sha256sum --check --quiet >>"$log" 2>&1 || fail "SHA-256 mismatch of $SDIST"
tar xzf "$work/$SDIST" -C "$work" >>"$log" 2>&1 || fail "unpacking $SDIST"
src="$work/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp"
# Static, so the one binary runs from anywhere (router mode starts copies of itself for each model).
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON >>"$log" 2>&1 || fail "cmake configure"
cmake --build "$work/build" --target llama-server -j"$(nproc)" >>"$log" 2>&1 || fail "cmake build"

mkdir -p "$work/out/bin"
cp "$work/build/bin/llama-server" "$work/out/bin/"
"$work/out/bin/llama-server" --version >>"$log" 2>&1 || fail "the built llama-server does not run"
mv "$work/out" "$final"
rm -rf "$work"
echo "$binary"
