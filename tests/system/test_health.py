"""/health and / on a real worker whose vector store cannot be reached: 503 with the reason, never "OK"."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from stream_app.stream.process import WorkerProcess, private_env

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
    env = private_env("health", kafka_bootstrap, tmp_path, STREAM_APP_TOPIC_PARTITIONS="1",
                      STREAM_APP_QDRANT_URL="http://127.0.0.1:1")  # a store nobody serves: every agent start fails
    port = env["STREAM_APP_WEB_PORT"]
    w = WorkerProcess(env, tmp_path)
    w.start()
    try:
        deadline = time.monotonic() + 120
        seen: list[tuple[int, dict]] = []
        while time.monotonic() < deadline:
            assert w.proc.poll() is None, w.log_text()
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
        w.stop()
