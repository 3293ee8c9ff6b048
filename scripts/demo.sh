#!/usr/bin/env bash
# Set up, then run the whole pipeline on the demo data: generates a synthetic delivery into the
# landing folder if it is empty, ingests, validates, builds the cohort and models, writes the report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/cohort demo "$@"
