#!/usr/bin/env bash
# System packages the test suite uses: Prometheus (server + promtool) from Debian.
# Installs them with apt-get when missing and we are root (as in CI); otherwise says what to do.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian package(s): prometheus" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
else
  echo "the tests need Prometheus (server and promtool): e.g. 'sudo apt-get install prometheus'" >&2
  exit 1
fi
