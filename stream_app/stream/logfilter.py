"""Log filters: collapse repeated log lines of the Kafka clients (one line per interval while the broker is
unreachable), and keep request paths (which hold user ids) out of the web server's error log.

When the broker goes away, aiokafka and Faust retry every few milliseconds and log each failure (a 41 s outage
once produced ~34,000 ERROR lines). `RepeatFilter` lets the first record of each kind through, drops identical
ones (same logger, level and message template) for `interval_s`, and then lets the next one through annotated with
how many were dropped. Records below WARNING pass untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

# Loggers whose warnings and errors are retried connection/coordination failures when the broker is down.
CLIENT_LOGGER_PREFIXES = ("aiokafka", "faust.transport", "faust.tables", "faust.sensors", "faust.app", "mode")


class RepeatFilter(logging.Filter):
    """Pass the first of each (logger, level, template) per interval; count and later report the others."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, int, str], float] = {}
        self._dropped: dict[tuple[str, int, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.levelno, f"{record.msg}|{exc_type}")
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
            if len(self._last) > 10_000:  # templates are few; this only guards against unbounded growth
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
        if dropped:
            record.msg = f"{record.msg} [{dropped} more like this in the last {self.interval_s:g}s]"
        return True


def client_loggers(prefixes: Iterable[str] = CLIENT_LOGGER_PREFIXES) -> list[logging.Logger]:
    """Every logger created so far (they are created when their module is imported) under the given prefixes."""
    names = [name for name in list(logging.Logger.manager.loggerDict)
             if any(name == p or name.startswith(p + ".") for p in prefixes)]
    return [logging.getLogger(name) for name in sorted(set(names) | set(prefixes))]


_installed: RepeatFilter | None = None


def install_connection_error_filter(interval_s: float) -> RepeatFilter:
    """Attach one shared RepeatFilter to the Kafka client loggers (idempotent; call again after late imports).

    A logger's filters see only the records logged on that very logger, so the filter goes on each of them.
    """
    global _installed
    import aiokafka.admin  # noqa: F401 - import the client modules so that their loggers exist
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import faust.transport.drivers.aiokafka  # noqa: F401

    if _installed is None or _installed.interval_s != interval_s:
        _installed = RepeatFilter(interval_s)
    for logger in client_loggers():
        for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
            logger.removeFilter(old)
        logger.addFilter(_installed)
    return _installed


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a line over 8,190 bytes, a bad header) at ERROR with a traceback
    whose message quotes the raw request line: the path, and with it the user id of `/users/<id>/`. User ids are
    logged only at DEBUG, so such a record keeps one line: the exception's type and status, not its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError  # noqa: PLC0415 - aiohttp is loaded by then

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "refused a malformed HTTP request: %s (status %s)", (type(exc).__name__, exc.code)
            record.exc_info = record.exc_text = None
        return True


def install_malformed_request_filter() -> None:
    """Attach MalformedRequestFilter to aiohttp's server logger (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())

