# Sourced by run.sh and test.sh: a virtualenv with the project installed, in $VENV (.venv)
# made by $PYTHON (python3).
# Usage: . scripts/venv.sh [extras]
set -euo pipefail
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        # Debian ships venv separately; as root we can add it.
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "$PYTHON -m venv failed: install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
        "$PYTHON" -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".${1:-}"
