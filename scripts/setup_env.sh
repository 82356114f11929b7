# Shared set-up of run_me.sh and run_tests.sh (sourced, not run): makes the virtual environment
# .venv beside this repository's code when it is missing, and installs a requirements file into it
# only when that file (or a file it includes with -r) changed since the last successful install.
# A requirements-nodeps.txt beside the requirements file follows, installed with --no-deps
# (packages whose own pins are stale); it counts in the same check.
#
#   source scripts/setup_env.sh
#   setup_env requirements.txt          # sets VENV and VENV_PYTHON
#
# Environment: PYTHON  the interpreter that creates .venv (default python3; Python >= 3.10).
#              VENV    where the environment lives (default <repository>/.venv).

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_DIR/.venv}"
VENV_PYTHON="$VENV/bin/python"

_setup_env_fail() {
    echo "setup: error: $*" >&2
    return 1
}

# The requirements file and every file it pulls in with -r/--requirement, recursively.
_requirement_files() {
    local file="$1" dir line included
    [ -f "$file" ] || return 0
    echo "$file"
    dir="$(dirname "$file")"
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            -r\ *|--requirement\ *|--requirement=*)
                included="${line#*[ =]}"
                included="${included#"${included%%[![:space:]]*}"}"
                _requirement_files "$dir/$included" ;;
        esac
    done < "$file"
}

# A checksum of a requirements file and the files it includes.
_requirements_sum() {
    local f
    _requirement_files "$1" | while IFS= read -r f; do  # one path a line: spaces are kept
        printf '%s\n' "${f##*/}"
        cat "$f"
    done | cksum | cut -d' ' -f1,2
}

setup_env() {
    local requirements="$1" python="${PYTHON:-python3}" stamp want nodeps
    [ -f "$requirements" ] || requirements="$REPO_DIR/$requirements"
    [ -f "$requirements" ] || _setup_env_fail "$1: no such requirements file" || return 1
    # (Re)create unless .venv has a working pip: a venv made without pip (Debian without
    # python3-venv) would otherwise fail on every later run.
    if ! "$VENV_PYTHON" -m pip --version >/dev/null 2>&1; then
        command -v "$python" >/dev/null 2>&1 ||
            _setup_env_fail "$python not found; install Python 3.10 or newer, or set PYTHON=/path/to/python3" || return 1
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
            _setup_env_fail "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); Python 3.10 or newer is needed (set PYTHON=...)" || return 1
        echo "setup: creating the virtual environment $VENV (one time) ..." >&2
        "$python" -m venv --clear "$VENV" ||
            _setup_env_fail "'$python -m venv $VENV' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv), then run again" || return 1
    fi
    stamp="$VENV/.installed-$(basename "$requirements" .txt)"
    nodeps="$(dirname "$requirements")/requirements-nodeps.txt"
    want="$(_requirements_sum "$requirements") $(_requirements_sum "$nodeps")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0  # installed, and the requirements did not change since
    fi
    echo "setup: installing $(basename "$requirements") into $VENV (first run, or it changed; torch is large, this can take minutes) ..." >&2
    "$VENV_PYTHON" -m pip install --disable-pip-version-check -r "$requirements" ||
        _setup_env_fail "installing $requirements failed (see pip's message above); fix it and run again" || return 1
    if [ -f "$nodeps" ]; then
        "$VENV_PYTHON" -m pip install --disable-pip-version-check --no-deps -r "$nodeps" ||
            _setup_env_fail "installing $nodeps failed (see pip's message above); fix it and run again" || return 1
    fi
    printf '%s\n' "$want" > "$stamp"
}
