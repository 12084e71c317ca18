"""Error policy of the agents, Faust-free: which failures are retried, with what backoff, and how a failing batch
is split (bisected) so that only the items that fail on their own are given up on.

- A transient failure (timeouts, connection and OS errors, a dead vector-store child) is retried with capped
  exponential backoff for as long as it lasts: the batch waits, nothing is dead-lettered for an outage.
- Any other failure is retried `retries` times, then the batch is split in two halves, each processed (and split)
  again; an item that still fails alone is returned as `Failed` with its exception, the others get results.
  One culprit in a batch of n costs O(log n) extra calls; good items are never given up for another's fault.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from stream_app.settings import setting_default

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the infrastructure is not there right now', not 'this input is bad'."""
    from stream_app.adapters.vectorstore import StoreError  # a dead or stuck store child, an unreachable server

    return (TimeoutError, ConnectionError, OSError, StoreError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; the agents build it from Settings."""

    # attempts after the first, for a non-transient failure, before the batch is split
    retries: int = field(default_factory=lambda: setting_default("batch_retries"))
    split_retries: int = 1  # the same for each half while bisecting
    backoff_s: float = field(default_factory=lambda: setting_default("retry_backoff_s"))  # first wait; doubles
    backoff_max_s: float = field(default_factory=lambda: setting_default("retry_backoff_max_s"))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1-based)."""
        return min(self.backoff_max_s, self.backoff_s * (2 ** max(attempt - 1, 0)))


@dataclass(frozen=True)
class Failed(Generic[T]):
    """An item that failed on its own (alone, after retries), with the exception that says why."""

    item: T
    error: Exception

    @property
    def reason(self) -> str:
        return f"processing failed: {type(self.error).__name__}: {self.error}"


class RateLimitedLog:
    """Log one line per `every_s` seconds for a repeated condition, with how many were suppressed."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            extra = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
            self.logger.warning(msg + extra, *args)
            self._last, self._suppressed = now, 0
        else:
            self._suppressed += 1


_outage_log = RateLimitedLog(log)


async def retry_transient(call: Callable[[], Awaitable[R]], policy: RetryPolicy, what: str) -> R:
    """call() until it returns; transient failures are retried forever with backoff, others are raised."""
    attempt = 0
    transient = transient_errors()
    while True:
        try:
            return await call()
        except transient as exc:
            attempt += 1
            _outage_log.warning("%s: %s: %.200s; retrying (attempt %d)", what, type(exc).__name__, exc, attempt)
            await asyncio.sleep(policy.delay(attempt))


async def process_resilient(fn: Callable[[list[T]], Awaitable[Sequence[R]]], items: Sequence[T],
                            policy: RetryPolicy, what: str) -> list[R | Failed[T]]:
    """fn(items) -> one result per item, made robust: retried, then bisected; failing items come back as Failed.

    fn must be safe to call again on any subset (no side effects that a failed call leaves behind).
    """
    return await _bisect(fn, list(items), policy, what, policy.retries)


async def _bisect(fn: Callable[[list[T]], Awaitable[Sequence[R]]], items: list[T], policy: RetryPolicy,
                  what: str, retries: int) -> list[R | Failed[T]]:
    if not items:
        return []
    attempt = 0
    while True:
        try:
            results = list(await retry_transient(lambda: fn(items), policy, what))
            if len(results) != len(items):
                raise RuntimeError(f"{what} returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # noqa: BLE001 - judged below: retried, split, or returned as Failed
            if attempt < retries:
                attempt += 1
                log.warning("%s failed on %d item(s) (%s: %.200s); retry %d of %d", what, len(items),
                            type(exc).__name__, exc, attempt, retries)
                await asyncio.sleep(policy.delay(attempt))
                continue
            if len(items) == 1:
                log.warning("%s failed on one item after %d retries: %s: %.200s", what, retries, type(exc).__name__, exc)
                return [Failed(items[0], exc)]
            mid = len(items) // 2
            return (await _bisect(fn, items[:mid], policy, what, policy.split_retries)
                    + await _bisect(fn, items[mid:], policy, what, policy.split_retries))
        return results
