#!/usr/bin/env bash
# The test command: set up .venv if needed (requirements-dev.txt: the project's requirements plus
# pytest), then run the test suite. Extra arguments go to pytest (e.g. ./run_tests.sh -k study -x).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$HERE/scripts/setup_env.sh"
setup_env "$HERE/requirements-dev.txt"
cd "$HERE"
exec "$VENV_PYTHON" -m pytest -q "$@"  # pytest.ini: testpaths = tests
