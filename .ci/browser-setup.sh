#!/usr/bin/env bash
# What tests/browser needs, on a clean Debian machine, as root:
#   - Debian's chromium (the browser test drives /usr/bin/chromium; nothing is downloaded at test time)
#   - Playwright for Python in the project's virtualenv (the pip package carries only its driver;
#     never run `playwright install`: the test passes executable_path=/usr/bin/chromium)
# Usage: .ci/browser-setup.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail

PY="${1:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
"$PY" -m pip install -q "playwright>=1.45"

chromium --version
"$PY" -c "import playwright.sync_api, importlib.metadata as m; print('playwright', m.version('playwright'))"
