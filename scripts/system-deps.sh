#!/usr/bin/env bash
# System packages the test suite uses, from Debian: Prometheus (server + promtool), stunnel4 and
# openssl (a real TLS listener in front of the embedded broker).
# Installs them with apt-get when missing and we are root (as in CI); otherwise says what to do.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian package(s): ${packages}" >&2
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages} >/dev/null
else
  echo "the tests need: ${packages}(e.g. 'sudo apt-get install ${packages}')" >&2
  exit 1
fi
