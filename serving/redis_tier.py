"""Redis as an optional tier: short timeouts, never on the event loop, and a circuit breaker.

The cache, the rate limits and the job queue share one `RedisTier`. A call that fails or
times out counts against the breaker; after `threshold` failures in a row the breaker opens
and calls fail at once (the callers fall back: a cache miss, in-process limits, 503 for
jobs) until `cooldown_s` has passed, when one call is let through to try again. A hung Redis
(accepts, never answers) thus costs a few requests one timeout each, not every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisUnavailable(RuntimeError):
    """Redis failed, timed out, or the breaker is open."""


class RedisTier:
    def __init__(self, url: str, *, timeout_s: float = 0.25, threshold: int = 3,
                 cooldown_s: float = 5.0,
                 on_state: Callable[[bool], None] = lambda is_open: None) -> None:
        import redis.asyncio as redis

        self.url = url
        self.timeout_s = timeout_s
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.on_state = on_state
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s,
                                           health_check_interval=10)
        self._failures = 0
        self._open_until = 0.0
        self._trial = False  # one call is trying while half-open

    @property
    def open(self) -> bool:
        return self._failures >= self.threshold

    async def call(self, make: Callable[[Any], Awaitable[T]]) -> T:
        """`make(client)` within the timeout, or RedisUnavailable at once when open."""
        if self.open:
            if time.monotonic() < self._open_until or self._trial:
                raise RedisUnavailable("Redis is unavailable (circuit open)")
            self._trial = True
        try:
            result = await asyncio.wait_for(make(self.client), self.timeout_s * 2)
        except Exception as exc:  # noqa: BLE001 - any failure counts against the breaker
            self._failed(exc)
            raise RedisUnavailable(f"Redis is unavailable: {type(exc).__name__}: {exc}"
                                   ) from None
        finally:
            self._trial = False
        if self._failures:
            if self.open:
                log.info("Redis answers again; circuit closed")
                self.on_state(False)
            self._failures = 0
        return result

    def _failed(self, exc: Exception) -> None:
        was_open = self.open
        self._failures += 1
        if self.open:
            self._open_until = time.monotonic() + self.cooldown_s
            if not was_open:
                log.warning("Redis failed %d times in a row (%s: %s); circuit open for %.0fs",
                            self._failures, type(exc).__name__, exc, self.cooldown_s)
                self.on_state(True)

    async def close(self) -> None:
        await self.client.aclose()
