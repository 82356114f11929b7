#!/usr/bin/env bash
# The test command: set up .venv if needed (requirements-dev.txt: the project's requirements plus
# pytest and ruff), check lint and formatting (ruff, pyproject.toml), then run the test suite.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k study -x). A lint error fails the command.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$HERE/scripts/setup_env.sh"
setup_env "$HERE/requirements-dev.txt"
cd "$HERE"
"$VENV_PYTHON" -m ruff check --quiet . || { echo "lint errors (above): fix them, or run .venv/bin/ruff check --fix ." >&2; exit 1; }
"$VENV_PYTHON" -m ruff format --check --quiet . || { echo "unformatted files (above): run .venv/bin/ruff format ." >&2; exit 1; }
exec "$VENV_PYTHON" -m pytest -q "$@"  # pytest.ini: testpaths = tests
