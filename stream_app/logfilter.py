"""Collapse repeated log lines of the Kafka clients: one line per interval while the broker is unreachable.

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
