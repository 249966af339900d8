#!/usr/bin/env bash
# Install (first run) and start Mirage Desktop. Extra arguments go to `mirage`, e.g. ./run.sh run --help
# NVIDIA GPU: MIRAGE_GPU=cuda ./run.sh    Windows any GPU: use WSL or pip install -e . && mirage
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-env.sh runtime
exec mirage "$@"
