#!/usr/bin/env bash
# Installs what is missing, then configures the host preset and builds the blockdiff program.
# Sourced by the scripts that run it; leaves `bin` pointing at the binary.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
export CCACHE_DIR="${CCACHE_DIR:-$PWD/.cache/ccache}"
cmake --preset host >/dev/null
cmake --build --preset host --target blockdiff_cli -j "$(nproc)"
bin=build/host/examples/blockdiff
