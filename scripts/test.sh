#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (the broker is started by the tests when none runs).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
cd "$repo"
exec .venv/bin/python -m pytest "$@"
