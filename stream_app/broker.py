"""The local development broker: a thin wrapper over scripts/kafka.sh (fetch, start, stop, status, logs [N])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"


def kafka_command(action: str, *args: str) -> int:
    """Run scripts/kafka.sh with the action and return its exit code (2 outside a source checkout)."""
    if not KAFKA_SCRIPT.exists():
        sys.stderr.write(f"stream-app: error: stream-app kafka needs a source checkout ({KAFKA_SCRIPT} is missing)\n")
        return 2
    return subprocess.call([str(KAFKA_SCRIPT), action, *args])
