#!/usr/bin/env bash
# Create .venv (once) and install the project into it. Usage: scripts/setup.sh [EXTRA]
# torch is installed first at an exact pin (TORCH_VERSION, default 2.13.0) so the
# project's own torch range installs nothing more. Re-runs are no-ops until
# pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-test}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-${extra}-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install --quiet -e ".[${extra}]"
  touch "$stamp"
fi
