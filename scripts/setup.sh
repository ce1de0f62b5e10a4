#!/usr/bin/env bash
# Set-up shared by the README's commands: Debian packages for headless Qt/OpenGL when missing,
# a virtual environment .venv at the repository root, and the package with its extras.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it reuses what is there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEB_PACKAGES="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4 \
libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-cursor0 libxcb-xkb1 \
libfontconfig1 libdbus-1-3"
missing=""
for p in $DEB_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.sedclassify-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing napari-sedclassify and its extras into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[all,testing]"
  echo "$want" > "$stamp"
fi
# The package's own bytecode: pip compiles what it installs, but not an editable source tree, and
# where PYTHONDONTWRITEBYTECODE is set (as on the project machines) Python would otherwise compile
# every module from source at every start (0.05-0.1 s of each command). Quick when up to date.
.venv/bin/python -m compileall -q src/napari_sedclassify >/dev/null
# The per-frame kernels compiled ahead of time for this machine (about 20 s once; a no-op when up to
# date): a command then never imports numba, 0.3-0.5 s of each. Without a C compiler numba compiles
# them at first use instead (processing/kernels.py).
.venv/bin/python -m napari_sedclassify.processing.kernels | sed 's/^/[setup] /'
export PATH="$ROOT/.venv/bin:$PATH"
export MPLBACKEND=Agg
