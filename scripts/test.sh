#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (a broker is started for them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/system-deps.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/hadolint Dockerfile
.venv/bin/kubernetes-validate --quiet deploy/kubernetes/*.yaml deploy/kubernetes/monitoring/*.yaml
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
