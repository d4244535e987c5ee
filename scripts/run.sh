#!/usr/bin/env bash
# Install what the app needs and serve it in embedded mode (no Redis: in-memory feed,
# jobs in-process) with the offline demo model at http://127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
exec "$VENV/bin/hypercorn" --worker-class uvloop --backlog 2048 app:app --bind "${BIND:-127.0.0.1:8000}"
