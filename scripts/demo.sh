#!/usr/bin/env bash
# Set up if needed, then run the demo: broker, worker, sample catalogue, scripted users, live recommendations.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
cd "$repo"
exec .venv/bin/stream-app demo "$@"
