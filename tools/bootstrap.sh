#!/usr/bin/env bash
# Create .venv and install mmxai_fast (built from this checkout, non-editable) with its test and
# benchmark extras. Torch is pinned to the 2.13.0 CPU build when no NVIDIA GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
INSTALL=(.venv/bin/python -m pip --disable-pip-version-check install -q)
[ -d /opt/wheels ] && INSTALL+=(--find-links /opt/wheels)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${INSTALL[@]}" "torch>=2.3"
else
  "${INSTALL[@]}" torch==2.13.0
fi
# The build itself never needs torch (see pyproject.toml): build isolation fetches only
# setuptools, pybind11 and cmake.
"${INSTALL[@]}" ".[test]"
# The viewer tests drive a headless Chromium: Debian's packages, installed only as root, only when
# missing, and never failing the bootstrap (the tests skip, saying why, without a browser).
if [ "$(id -u)" = 0 ] && ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
    >/dev/null 2>&1 || echo "bootstrap: could not install chromium (viewer browser tests will skip)" >&2
fi
