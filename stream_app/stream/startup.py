"""What `stream-app worker` checks before Faust starts, and the worker's log hygiene.

Each check fails with one line that names the setting (STREAM_APP_*) or the file at fault, so a misconfigured
worker exits at once instead of crash-looping while looking healthy: settings, the data dir lock, the web port,
the encoder model, the broker and the topics' partition counts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)
ENV_PREFIX = "STREAM_APP_"


class StartupError(RuntimeError):
    """A check before start failed; the message is the one line shown to the operator (exit 2: bad settings)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(cached: bool = True) -> Any:
    """The settings (the process-wide ones, or read from the environment again with cached=False), or StartupError
    naming each STREAM_APP_* variable that is wrong."""
    from pydantic import ValidationError

    from stream_app.settings import Settings, get_settings

    try:
        return get_settings() if cached else Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err.get("loc", ())) or "?"
            name = env_name(field)
            got = os.environ.get(name)
            problems.append(f"{name}={got!r}: {err.get('msg')}" if got is not None else f"{name}: {err.get('msg')}")
        raise StartupError("invalid settings: " + "; ".join(problems), exit_code=2) from None


_LOCKS: list[IO[str]] = []  # held for the life of the process


def lock_data_dir(data_dir: Path) -> Path:
    """Create the data dir and hold an exclusive lock on data_dir/worker.lock (one worker per data dir)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create STREAM_APP_DATA_DIR={data_dir}: {exc.strerror}") from None
    path = data_dir / "worker.lock"
    handle = open(path, "a+")  # noqa: SIM115 - kept open: the lock lives as long as the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise StartupError(f"STREAM_APP_DATA_DIR={data_dir} is in use by another worker (pid {holder}, lock file "
                           f"{path}); give each worker its own data dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _LOCKS.append(handle)
    return path


def check_port(host: str, port: int) -> None:
    """StartupError when something already listens on the web port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StartupError(f"STREAM_APP_WEB_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
                               "another worker or program uses it") from None


def load_model(settings: Any) -> Any:
    """The encoder, or StartupError naming the model setting and folder."""
    from stream_app.adapters.encoder import load_encoder

    try:
        return load_encoder(settings)
    except Exception as exc:  # noqa: BLE001 - any failure to load is reported in one line
        where = (f"STREAM_APP_MODEL_DIR={settings.model_dir}" if settings.model_dir is not None
                 else f"STREAM_APP_MODEL_NAME={settings.model_name} ({settings.resolved_model_dir()})")
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartupError(f"cannot load the encoder model {where}: {type(exc).__name__}: {detail}") from None


def check_partitions(wanted: dict[str, int], found: dict[str, int], settings: Any) -> None:
    """StartupError when an existing topic's partition count differs from what the settings declare."""
    wrong = [f"'{name}' has {found[name]}" for name, n in wanted.items() if name in found and found[name] != n]
    if wrong:
        raise StartupError(f"STREAM_APP_TOPIC_PARTITIONS={settings.topic_partitions} but topic {', '.join(wrong)} "
                           "partitions; set it to match the topics (or use a new STREAM_APP_APP_ID and topics)")


class CoordinatorNoise(logging.Filter):
    """aiokafka logs a retriable `Group Coordinator Request failed` at ERROR while a fresh broker creates its
    offsets topic (every first start). Retriable ones are dropped for the first `grace_s` seconds, then shown at
    most once per `every_s` as a warning; anything else passes unchanged."""

    def __init__(self, grace_s: float = 60.0, every_s: float = 60.0) -> None:
        super().__init__()
        self.started = time.monotonic()
        self.grace_s = grace_s
        self.every_s = every_s
        self.last_shown = -1e18

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Group Coordinator Request failed"):
            return True
        err = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if not getattr(err, "retriable", False):
            return True
        now = time.monotonic()
        if now - self.started < self.grace_s or now - self.last_shown < self.every_s:
            return False
        self.last_shown = now
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_worker_class(base: type) -> type:
    """faust.Worker without the terminal spinner when stdout is not a terminal (no ANSI codes in log files)."""

    class QuietWorker(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not self.stdout.isatty():
                self.spinner = None

    return QuietWorker
