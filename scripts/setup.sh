#!/usr/bin/env bash
# Create .venv (once) and install the project into it. Usage: scripts/setup.sh [EXTRA]
# torch is installed first at an exact pin (TORCH_VERSION, default 2.13.0) so the
# project's own torch range installs nothing more. Re-runs are no-ops until
# pyproject.toml changes. pip says only errors (-qq): the README's two commands print
# the project's own output, not pip's and setuptools' warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-test}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-${extra}-$(sha256sum pyproject.toml | cut -c1-16)"
pip=(.venv/bin/python -m pip -qq --disable-pip-version-check)
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (first run: a few minutes)" >&2
  "${pip[@]}" install --upgrade pip
  "${pip[@]}" install "torch==${TORCH_VERSION:-2.13.0}"
  "${pip[@]}" install -e ".[${extra}]"
  touch "$stamp"
fi
