"""Response cache for deterministic requests: an in-process LRU in front of Redis (optional)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

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

    A Redis outage degrades to the local tier (logged), never to a failed request."""

    def __init__(self, size: int, redis_url: str | None = None, ttl_s: int = 3600) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._local: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5,
                                               socket_connect_timeout=0.5)

    def get(self, key: str) -> tuple[Any, str | None]:
        """(value, tier) where tier is 'local', 'redis' or None on a miss."""
        with self._lock:
            if key in self._local:
                self._local.move_to_end(key)
                return self._local[key], "local"
        if self._redis is not None:
            try:
                raw = self._redis.get(key)
            except Exception as exc:  # noqa: BLE001 - any Redis failure means a miss
                log.warning("redis cache unavailable: %s", exc)
                raw = None
            if raw is not None:
                value = json.loads(raw)
                self._remember(key, value)
                return value, "redis"
        return None, None

    def put(self, key: str, value: Any) -> None:
        self._remember(key, value)
        if self._redis is not None:
            try:
                self._redis.set(key, json.dumps(value, ensure_ascii=False), ex=self.ttl_s)
            except Exception as exc:  # noqa: BLE001
                log.warning("redis cache unavailable: %s", exc)

    def _remember(self, key: str, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._local[key] = value
            self._local.move_to_end(key)
            while len(self._local) > self.size:
                self._local.popitem(last=False)
