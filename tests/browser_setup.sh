#!/usr/bin/env bash
# Installs what tests/test_study_browser.py needs: Debian's Chromium, its
# matching chromedriver, and the selenium Python package. Idempotent: each step
# runs only when its piece is missing, so calling it before every pytest run is
# cheap. Needs root (or sudo) for apt-get; the venv defaults to ./.venv.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-${repo_root}/.venv/bin/python}"

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
else
  as_root=(sudo)
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  "${as_root[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y --no-install-recommends chromium chromium-driver
fi

if ! "${python}" -c "import selenium" >/dev/null 2>&1; then
  "${python}" -m pip install "selenium>=4.20"
fi

echo "browser_setup: $(chromium --version 2>/dev/null); $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2); selenium $("${python}" -c 'import selenium; print(selenium.__version__)')"
