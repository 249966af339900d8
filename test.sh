#!/usr/bin/env bash
# Install what the tests need (Debian packages, a virtualenv) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-env.sh test

# A real PulseAudio server for the virtual-microphone tests (root may run it in a container).
if command -v pulseaudio >/dev/null 2>&1 && ! pactl info >/dev/null 2>&1; then
  pulseaudio -D --exit-idle-time=-1 --system=false --disallow-exit 2>/dev/null || true
  for _ in $(seq 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Lint and type checks first (seconds): ruff on everything, mypy on the engine core.
if [ $# -eq 0 ]; then
  python -m ruff check mirage_desktop tests scripts
  python -m mypy mirage_desktop/engine.py mirage_desktop/status.py mirage_desktop/config.py mirage_desktop/fsutil.py \
    mirage_desktop/vision/stages.py mirage_desktop/vision/pipeline.py mirage_desktop/models/contract.py \
    mirage_desktop/models/loader.py
fi

export QT_QPA_PLATFORM=offscreen
exec python -m pytest -q "$@"
