"""/health and / on a real worker whose vector store cannot be reached: 503 with the reason, never "OK"."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.kafka


def status(url: str) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def test_a_worker_that_cannot_serve_answers_503(kafka_bootstrap, tmp_path):
    run = uuid.uuid4().hex[:8]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STREAM_APP_KAFKA_BOOTSTRAP": kafka_bootstrap, "STREAM_APP_APP_ID": f"health-{run}",
           "STREAM_APP_ITEMS_TOPIC": f"health-items-{run}", "STREAM_APP_BEHAVIOUR_TOPIC": f"health-behaviour-{run}",
           "STREAM_APP_RECOMMENDATIONS_TOPIC": f"health-recs-{run}", "STREAM_APP_DLQ_TOPIC": f"health-dlq-{run}",
           "STREAM_APP_ITEMS_DLQ_TOPIC": f"health-items-dlq-{run}", "STREAM_APP_DATA_DIR": str(tmp_path),
           "STREAM_APP_WEB_PORT": str(port), "STREAM_APP_TOPIC_PARTITIONS": "1",
           "STREAM_APP_QDRANT_URL": "http://127.0.0.1:1"}  # a store nobody serves: every agent start fails
    with open(tmp_path / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "worker", "--loglevel", "warn"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        seen: list[tuple[int, dict]] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            got = status(f"http://127.0.0.1:{port}/health")
            if got is not None:
                seen.append(got)
                assert got[0] == 503 and got[1]["status"] == "FAILING", got  # never OK, also while starting
                if any("crash-looping" in p for p in got[1]["problems"]):
                    break
            time.sleep(0.5)
        code, body = seen[-1]
        assert any("crash-looping" in p for p in body["problems"]), body
        assert any("pipeline failed to start" in p for p in body["problems"]), body
        index = status(f"http://127.0.0.1:{port}/")
        assert index is not None and index[0] == 503
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
