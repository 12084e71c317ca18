"""The broker script's lifecycle on a second, private broker: start, start again, status, stop, nothing left."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from stream_app.stream.process import free_port_pair

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kafka.sh"

pytestmark = pytest.mark.kafka


def run(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), cmd], env=env, capture_output=True, text=True, timeout=120)


def test_start_twice_then_stop_leaves_no_process(tmp_path):
    port = free_port_pair()
    env = {**os.environ, "STREAM_APP_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "STREAM_APP_KAFKA_DIR": str(tmp_path / "k")}
    first = run("start", env)
    assert first.returncode == 0, first.stdout + first.stderr
    pid = int((tmp_path / "k" / "kafka.pid").read_text())
    try:
        second = run("start", env)
        assert second.returncode == 0
        assert "already running" in second.stdout
        assert run("status", env).returncode == 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        stopped = run("stop", env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the broker process is still alive after stop"
    assert run("status", env).returncode == 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
