"""Per API key limits, as a gateway sets them: requests per second, generated tokens per
minute and feedback posts per minute, each a token bucket. Over a limit → 429 with
Retry-After.

Buckets live in Redis when it is configured (one Lua script, atomic, on Redis' clock, so
replicas share them) and in this process otherwise, or while Redis is unavailable. Requests
are admitted while the token bucket is not empty and charged what they generated when they
end (a request cannot know its length beforehand): one long answer can take the bucket
below zero, and the next requests wait until it has refilled.

Keys are named by a key id (`k-` and 12 hex digits of the key's SHA-256) in settings,
metrics and logs; never by the key.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from serving.redis_tier import RedisTier, RedisUnavailable
from tasks.errors import BadInput

REQUESTS, TOKENS, FEEDBACK = "requests_per_s", "tokens_per_min", "feedback_per_min"
KINDS = (REQUESTS, TOKENS, FEEDBACK)
NO_NEED = -1e18  # a charge is always taken

# KEYS[1]: the bucket; ARGV: capacity, refill per second, cost, level needed first.
TAKE = """
local now = redis.call('TIME')
local t_now = tonumber(now[1]) + tonumber(now[2]) / 1e6
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, need = tonumber(ARGV[3]), tonumber(ARGV[4])
local level = tonumber(redis.call('HGET', KEYS[1], 'l'))
local t = tonumber(redis.call('HGET', KEYS[1], 't'))
if level == nil then level = cap; t = t_now end
level = math.min(cap, level + (t_now - t) * rate)
local ok = level >= need
if ok then level = level - cost end
redis.call('HSET', KEYS[1], 'l', tostring(level), 't', tostring(t_now))
redis.call('EXPIRE', KEYS[1], 3600)
if ok then return {1, '0'} end
return {0, tostring((need - level) / rate)}
"""


def key_id(key: str) -> str:
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Limit:
    requests_per_s: float = 0.0  # 0: no limit
    tokens_per_min: float = 0.0
    feedback_per_min: float = 0.0

    def bucket(self, kind: str) -> tuple[float, float] | None:
        """(capacity, refill per second), or None where unlimited. A second's requests may
        come at once (at least one); a minute's tokens or feedback may be spent at once."""
        value = getattr(self, kind)
        if value <= 0:
            return None
        if kind == REQUESTS:
            return max(value, 1.0), value
        return value, value / 60


def parse_limits(default: Limit, per_key: str | None) -> tuple[Limit, dict[str, Limit]]:
    """The default limit and the per-key ones (`AIGC_KEY_LIMITS`: JSON object of key id →
    {"requests_per_s": .., "tokens_per_min": .., "feedback_per_min": ..}; what a key does
    not name is the default)."""
    if not per_key:
        return default, {}
    try:
        raw = json.loads(per_key)
    except ValueError as exc:
        raise BadInput(f"AIGC_KEY_LIMITS: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BadInput("AIGC_KEY_LIMITS: must be an object of key id → limits")
    limits = {}
    for kid, spec in raw.items():
        where = f"AIGC_KEY_LIMITS.{kid}"
        if not isinstance(spec, dict) or set(spec) - set(KINDS):
            raise BadInput(f"{where}: give an object with any of {', '.join(KINDS)}")
        values = {}
        for name in KINDS:
            value = spec.get(name, getattr(default, name))
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise BadInput(f"{where}.{name}: {value!r} is not a number >= 0")
            values[name] = float(value)
        limits[kid] = Limit(**values)
    return default, limits


class RateLimited(Exception):
    def __init__(self, kind: str, retry_after_s: float) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_after_s = retry_after_s


class Limits:
    def __init__(self, default: Limit, per_key: dict[str, Limit],
                 redis: RedisTier | None = None) -> None:
        self.default = default
        self.per_key = per_key
        self.redis = redis
        self._local: dict[str, list[float]] = {}  # bucket: [level, time]

    def limit(self, kid: str) -> Limit:
        return self.per_key.get(kid, self.default)

    def _take_local(self, bucket: str, cap: float, rate: float, cost: float, need: float,
                    ) -> float | None:
        now = time.monotonic()
        level, t = self._local.get(bucket, (cap, now))
        level = min(cap, level + (now - t) * rate)
        if level < need:
            self._local[bucket] = [level, now]
            return (need - level) / rate
        self._local[bucket] = [level - cost, now]
        return None

    async def _take(self, kid: str, kind: str, cost: float, need: float) -> float | None:
        """None when taken, else the seconds until it could be."""
        spec = self.limit(kid).bucket(kind)
        if spec is None:
            return None
        cap, rate = spec
        bucket = f"aigc:rl:{kid}:{kind}"
        if self.redis is not None:
            try:
                ok, wait = await self.redis.call(
                    lambda r: r.eval(TAKE, 1, bucket, cap, rate, cost, need))
                return None if int(ok) else float(wait)
            except RedisUnavailable:
                pass  # this replica's own buckets until Redis is back
        return self._take_local(bucket, cap, rate, cost, need)

    async def admit(self, kid: str, kinds: tuple[str, ...]) -> None:
        """Raise RateLimited when the key is over one of these limits. A request and a
        feedback post take one; tokens are only checked here (charged at the end)."""
        for kind in kinds:
            wait = await self._take(kid, kind, 0.0 if kind == TOKENS else 1.0, 1.0)
            if wait is not None:
                raise RateLimited(kind, wait)

    async def charge(self, kid: str, tokens: int) -> None:
        """Take what a request generated from its key's token bucket."""
        if tokens > 0:
            await self._take(kid, TOKENS, float(tokens), NO_NEED)

    def described(self, kids: list[str]) -> list[tuple[str, str, float]]:
        """(key id, limit, value) for /metrics: the default and each configured key."""
        rows: list[tuple[str, str, float]] = []
        for kid, limit in [("default", self.default), *((k, self.limit(k)) for k in kids)]:
            rows += [(kid, kind, getattr(limit, kind)) for kind in KINDS]
        return rows


def retry_after(seconds: float) -> dict[str, Any]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
