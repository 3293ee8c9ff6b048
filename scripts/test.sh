#!/usr/bin/env bash
# Set up if needed, then run the test suite (arguments go to pytest).
set -euo pipefail
# System packages the browser and PDF tests need: Debian's Chromium, poppler (pdftotext, pdfinfo), a font.
if ! command -v chromium >/dev/null || ! command -v pdftotext >/dev/null; then
  echo "installing chromium, poppler-utils and fonts (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium poppler-utils fonts-dejavu-core >/dev/null
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest "$@"
