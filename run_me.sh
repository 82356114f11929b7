#!/usr/bin/env bash
# The whole study in one command (docs/design.md#study-runner): set up .venv if needed, then run run_study.py.
#
#   ./run_me.sh                      # everything; steps already up to date are skipped
#   ./run_me.sh --help               # all flags (data root, epochs, device, --steps/--skip, --force)
#   ./run_me.sh --data_root /path/to/Assignment4_datasets
#
# Writes out/study_report.md, out/study_report.html and out/study_summary.json (and the figures,
# checkpoints and metrics JSON of every step), relative to the current folder.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$HERE/scripts/setup_env.sh"
setup_env "$HERE/requirements.txt"
exec "$VENV_PYTHON" "$HERE/run_study.py" "$@"
