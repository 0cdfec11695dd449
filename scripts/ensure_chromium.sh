#!/usr/bin/env bash
# Makes sure Debian's headless browser and its WebDriver are installed, for the dashboard's browser
# test (`make test` calls this). Installs them with apt-get when missing; needs root.
set -euo pipefail
chromium=${CHROMIUM:-/usr/bin/chromium}
driver=${CHROMEDRIVER:-/usr/bin/chromedriver}

if [ -x "$chromium" ] && [ -x "$driver" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "ensure_chromium: $chromium or $driver is missing; install the packages chromium and chromium-driver" >&2
  exit 1
fi
echo "ensure_chromium: installing chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
"$chromium" --version >&2
