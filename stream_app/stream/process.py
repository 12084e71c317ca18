"""A `stream-app worker` child process: start it, read its /stats/ page, wait on it, stop it.

One harness for everything that runs a worker from outside: the demo (stream_app.demo), the pipeline benchmark
(benchmarks/pipeline.py) and the system tests (tests/system/).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p+1 are both free (a private broker and its controller)."""
    for _ in range(50):
        port = free_port(host)
        try:
            with socket.socket() as s:
                s.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


# The run tags private_env handed out in this process: its private topics (and its app's changelogs) carry them,
# so a test session deletes exactly the topics it made (tests/conftest.py) and never another run's.
RUN_TAGS: list[str] = []


def private_env(prefix: str, bootstrap: str, data: Path | str, **extra: str) -> dict[str, str]:
    """This process's environment plus a fresh app id, private topics, a data dir and a free web port.

    The app id is "<prefix>-<run>" and each topic "<prefix>-<kind>-<run>", run a fresh random tag (kept in
    RUN_TAGS); extra (STREAM_APP_* names) is applied last.
    """
    run = uuid.uuid4().hex[:8]
    RUN_TAGS.append(run)
    return {
        **os.environ,
        "STREAM_APP_KAFKA_BOOTSTRAP": bootstrap,
        "STREAM_APP_APP_ID": f"{prefix}-{run}",
        "STREAM_APP_ITEMS_TOPIC": f"{prefix}-items-{run}",
        "STREAM_APP_BEHAVIOUR_TOPIC": f"{prefix}-behaviour-{run}",
        "STREAM_APP_RECOMMENDATIONS_TOPIC": f"{prefix}-recs-{run}",
        "STREAM_APP_DLQ_TOPIC": f"{prefix}-dlq-{run}",
        "STREAM_APP_ITEMS_DLQ_TOPIC": f"{prefix}-items-dlq-{run}",
        "STREAM_APP_DATA_DIR": str(data),
        "STREAM_APP_WEB_PORT": str(free_port()),
        **extra,
    }


def spawn_worker(env: dict[str, str], log_path: Path, loglevel: str = "warn",
                 cwd: Path | None = None) -> subprocess.Popen:
    """Run `stream-app worker` as a child process in its own session, its output appended to log_path."""
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stream_app.cli", "worker", "--loglevel", loglevel],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a worker the way an operator would (SIGTERM to its session), killing it only if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen | None = None,
               interval: float = 0.2, detail: Callable[[], str] = lambda: "") -> None:
    """Poll predicate() until true; raise when the process exited meanwhile or after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} while waiting for {what}{detail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}{detail()}")
        time.sleep(interval)


@dataclass
class WorkerProcess:
    """A `stream-app worker` child process, the environment it was started with and its log file in data."""

    env: dict[str, str]
    data: Path
    proc: subprocess.Popen | None = None
    loglevel: str = "warn"
    cwd: Path | None = None
    log_name: str = "worker.log"

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAM_APP_WEB_PORT']}"

    @property
    def log_path(self) -> Path:
        return Path(self.data) / self.log_name

    def topic(self, name: str) -> str:
        return self.env[f"STREAM_APP_{name.upper()}_TOPIC"]

    def start(self) -> None:
        self.proc = spawn_worker(self.env, self.log_path, self.loglevel, self.cwd)

    def stats(self, timeout: float = 5) -> dict | None:
        """The worker's /stats/ page, or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.web}/stats/", timeout=timeout) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
        if self.proc is None:
            raise RuntimeError(f"worker not started; waiting for {what}")
        wait_until(predicate, timeout, what, self.proc, interval, lambda: f"; log: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (the vector-store child too): a crash, no clean-up."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]


def start_worker(env: dict[str, str], data: Path, timeout: float = 180, **options) -> WorkerProcess:
    """A started worker, returned once its web view answers (stopped again when it does not in time)."""
    w = WorkerProcess(env, Path(data), **options)
    w.start()
    try:
        w.wait_until(lambda: w.stats() is not None, timeout, "the web view", interval=0.2)
    except BaseException:
        w.stop()
        raise
    return w
