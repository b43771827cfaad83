#!/usr/bin/env bash
# The end-to-end demo on an embedded local broker: train, stream, detect, summarise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/anomaly-demo "$@"
