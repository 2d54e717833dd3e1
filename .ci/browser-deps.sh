#!/usr/bin/env bash
# What the report's browser test (tests/segengine/test_report.py) needs beyond the venv: Debian's headless Chromium,
# which Playwright drives (`executable_path`, so Playwright downloads no browser of its own). Idempotent: nothing is
# installed when /usr/bin/chromium is there. Needs root to install (CI runs as root); without it, says what to run.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "browser-deps: ok ($(chromium --version 2>/dev/null | head -1))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "browser-deps: chromium is missing; install it as root: apt-get install chromium" >&2
    exit 1
fi
echo "browser-deps: installing chromium (Debian's package)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium
}
echo "browser-deps: ok ($(chromium --version 2>/dev/null | head -1))"
