"""Response cache for deterministic requests: an in-process LRU in front of Redis (optional)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from serving.redis_tier import RedisTier, RedisUnavailable

log = logging.getLogger(__name__)


def normalise_prompt(prompt: str) -> str:
    """Prompts that differ only in Unicode form or whitespace get the same answer."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def cache_key(version: str, prompt: str | Sequence[Mapping[str, str]],
              params: dict[str, Any]) -> str:
    """A prompt or a conversation (its messages' text normalised), version and settings."""
    text = normalise_prompt(prompt) if isinstance(prompt, str) else [
        {**m, "content": normalise_prompt(m["content"])} for m in prompt]
    payload = json.dumps({"v": version, "p": text, "s": params},
                         sort_keys=True, ensure_ascii=False)
    return "aigc:gen:" + hashlib.sha256(payload.encode()).hexdigest()


def is_deterministic(temperature: float, seed: int | None) -> bool:
    """Greedy decoding, or sampling with a caller-given seed, repeats itself."""
    return temperature == 0 or seed is not None


class ResponseCache:
    """get/put of JSON values. Local hits are free; Redis shares hits across replicas.

    A Redis outage degrades to the local tier (the tier's breaker keeps it from costing
    every request a timeout), never to a failed request."""

    def __init__(self, size: int, redis: RedisTier | None = None, ttl_s: int = 3600) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self.redis = redis
        self._local: OrderedDict[str, Any] = OrderedDict()

    async def get(self, key: str) -> tuple[Any, str | None]:
        """(value, tier) where tier is 'local', 'redis' or None on a miss."""
        if key in self._local:
            self._local.move_to_end(key)
            return self._local[key], "local"
        if self.redis is not None:
            try:
                raw = await self.redis.call(lambda r: r.get(key))
            except RedisUnavailable as exc:
                log.debug("cache miss: %s", exc)
                raw = None
            if raw is not None:
                value = json.loads(raw)
                self._remember(key, value)
                return value, "redis"
        return None, None

    async def put(self, key: str, value: Any) -> None:
        self._remember(key, value)
        if self.redis is not None:
            payload = json.dumps(value, ensure_ascii=False)
            with contextlib.suppress(RedisUnavailable):
                await self.redis.call(lambda r: r.set(key, payload, ex=self.ttl_s))

    def _remember(self, key: str, value: Any) -> None:
        # Only the event loop touches the local tier: no lock needed.
        if self.size <= 0:
            return
        self._local[key] = value
        self._local.move_to_end(key)
        while len(self._local) > self.size:
            self._local.popitem(last=False)
