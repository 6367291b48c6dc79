#!/usr/bin/env bash
# Installs what blockdiff needs from Debian's packages (skips apt when everything is there).
set -euo pipefail
packages=(cmake ninja-build g++ clang libomp-dev ccache python3 libeigen3-dev nlohmann-json3-dev libcli11-dev
          doctest-dev libbenchmark-dev libopenblas-dev libpcre2-dev libutf8proc-dev gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "blockdiff: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
