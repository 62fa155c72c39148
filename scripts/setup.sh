#!/usr/bin/env bash
# Create .venv from nothing: Debian packages for offscreen MuJoCo rendering (EGL + OSMesa via Mesa
# llvmpipe) and headless Chromium for the report test, then the Python environment.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 libglfw3 chromium chromium-driver"
missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.z1-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -U pip
  # The CPU wheel of torch lies on local disk; install it first so nothing pulls a CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[sim,dev,report,ray]"
  touch "$stamp"
fi
echo "[setup] .venv ready"
