#!/usr/bin/env bash
# Install what the browser tests (pytest -m browser) drive: Debian's Chromium at /usr/bin/chromium.
# Idempotent and quiet; never downloads a browser through Playwright (`playwright install`).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-browser: /usr/bin/chromium is missing and apt-get is not available;" \
    "install Chromium with the system's package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium >/dev/null
if [ ! -x /usr/bin/chromium ]; then
  echo "ensure-browser: apt-get installed chromium but /usr/bin/chromium is missing" >&2
  exit 1
fi
