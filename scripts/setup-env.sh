#!/usr/bin/env bash
# Shared by run.sh and test.sh: system packages (Debian/Ubuntu) and the project's virtualenv.
# Usage: source scripts/setup-env.sh <runtime|test>
#
# Quick when nothing changed: the system libraries are checked by asking the dynamic loader for
# each one (apt-get runs only for what is missing), and pip runs only when pyproject.toml, this
# script, the mode or MIRAGE_GPU changed since the last set-up that finished (recorded in
# $VENV/.mirage-setup). Delete that file to reinstall the Python packages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIRAGE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
mode="${1:-runtime}"
STAMP="$VENV/.mirage-setup"

# Libraries as SONAME=PACKAGE. What Qt needs for the window (X11 and Wayland) is listed once, in
# mirage_desktop/gui/qtlibs.py (QT_LIBRARIES), and added by it; PortAudio is for sounddevice.
system_libraries=(libportaudio.so.2=libportaudio2)
# Programs as COMMAND=PACKAGE: the tests' PulseAudio server, X server, speech and audio tools.
system_programs=()
if [ "$mode" = test ]; then
  system_programs+=(pulseaudio=pulseaudio pactl=pulseaudio-utils Xvfb=xvfb espeak-ng=espeak-ng sox=sox)
  # `mirage serve`: the browser client's test (headless Chromium) and the scrape config's (Prometheus)
  system_programs+=(chromium=chromium prometheus=prometheus)
fi

install_system_packages() {
  command -v apt-get >/dev/null 2>&1 || return 0  # not Debian/Ubuntu: the README lists what is needed
  local found p missing=()
  found="$("$PY" "$ROOT/mirage_desktop/gui/qtlibs.py" --missing-packages "${system_libraries[@]}")"
  for p in "${system_programs[@]}"; do
    command -v "${p%%=*}" >/dev/null 2>&1 || found="$found ${p#*=}"
  done
  read -r -a missing <<<"$found"
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

# What the virtualenv was last set up for: the files that decide what pip installs, the mode, the GPU.
setup_key() {
  local gpu=""
  [ "$1" = runtime ] && gpu="${MIRAGE_GPU:-}"
  local sum
  sum="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup-env.sh" | sha256sum)"
  echo "${sum%% *} $1 $gpu"
}

venv_is_set_up() {
  [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/mirage" ] && [ -f "$STAMP" ] || return 1
  [ "$mode" != test ] || [ -x "$VENV/bin/pytest" ] || return 1
  local have
  have="$(cat "$STAMP")"
  [ "$have" = "$(setup_key "$mode")" ] && return 0
  # a test set-up has everything a CPU runtime needs
  [ "$mode" = runtime ] && [ -z "${MIRAGE_GPU:-}" ] && [ "$have" = "$(setup_key test)" ]
}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  rm -f "$STAMP"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if [ "$mode" = test ]; then
    # torch is optional for users (CodeFormer); the tests need it. Ask for the CPU build explicitly:
    # a plain `torch` requirement pulls a multi-GB CUDA build.
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" -e "$ROOT[dev,serve]"
    # insightface ships the six-face test photo t1.jpg; its own dependencies are not needed
    "${pip[@]}" --no-deps "insightface==2.1"
  else
    "${pip[@]}" -e "$ROOT"
    case "${MIRAGE_GPU:-}" in
      cuda) "$VENV/bin/python" -m pip uninstall -y -q onnxruntime || true; "${pip[@]}" "onnxruntime-gpu>=1.17" ;;
      directml) "$VENV/bin/python" -m pip uninstall -y -q onnxruntime || true; "${pip[@]}" "onnxruntime-directml>=1.17" ;;
    esac
  fi
  setup_key "$mode" >"$STAMP.tmp" && mv -f "$STAMP.tmp" "$STAMP"
}

install_system_packages
venv_is_set_up || setup_venv
export PATH="$VENV/bin:$PATH"
