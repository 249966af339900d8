#!/usr/bin/env bash
# Shared by run.sh and test.sh: system packages (Debian/Ubuntu) and the project's virtualenv.
# Usage: source scripts/setup-env.sh <runtime|test>
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIRAGE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
mode="${1:-runtime}"

apt_packages=(libportaudio2 libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3)
if [ "$mode" = test ]; then
  apt_packages+=(pulseaudio pulseaudio-utils xvfb espeak-ng sox)
fi

install_system_packages() {
  command -v dpkg-query >/dev/null 2>&1 || return 0
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "setup: please install these Debian packages: ${missing[*]}" >&2; return 0; fi
  fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if [ "$mode" = test ]; then
    # torch is optional for users (CodeFormer); the tests need it. Ask for the CPU build explicitly:
    # a plain `torch` requirement pulls a multi-GB CUDA build.
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" -e "$ROOT[dev]"
    # insightface ships the six-face test photo t1.jpg; its own dependencies are not needed
    "${pip[@]}" --no-deps "insightface==2.1"
  else
    "${pip[@]}" -e "$ROOT"
    case "${MIRAGE_GPU:-}" in
      cuda) "$VENV/bin/python" -m pip uninstall -y -q onnxruntime || true; "${pip[@]}" "onnxruntime-gpu>=1.17" ;;
      directml) "$VENV/bin/python" -m pip uninstall -y -q onnxruntime || true; "${pip[@]}" "onnxruntime-directml>=1.17" ;;
    esac
  fi
}

install_system_packages
setup_venv
export PATH="$VENV/bin:$PATH"
