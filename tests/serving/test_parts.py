"""Batching, caching and routing on their own: no model, no server."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.batching import Batcher
from serving.cache import ResponseCache, cache_key, is_deterministic
from serving.pool import in_canary
from serving.redis_tier import RedisTier, RedisUnavailable
from tests.conftest import require_service


def test_requests_within_the_window_share_a_batch_and_get_their_own_result():
    sizes: list[int] = []

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(lambda items: [i * 10 for i in items], max_batch=4,
                              max_wait_s=0.05, executor=pool, on_batch=sizes.append)
            results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
            await batcher.close()
            return results

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) == 3


def test_a_failing_batch_fails_every_request_in_it():
    def boom(items):
        raise RuntimeError("model broke")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(boom, max_batch=8, max_wait_s=0.05, executor=pool)
            results = await asyncio.gather(*(batcher.submit(i) for i in range(3)),
                                           return_exceptions=True)
            await batcher.close()
            return results

    assert [str(r) for r in asyncio.run(main())] == ["model broke"] * 3


def test_cache_key_normalises_the_prompt_and_separates_versions_and_parameters():
    params = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": None}
    assert cache_key("1", " hi  there\n", params) == cache_key("1", "hi there", params)
    assert cache_key("1", "hi", params) != cache_key("2", "hi", params)
    assert cache_key("1", "hi", params) != cache_key("1", "hi", params | {"top_p": 0.9})
    assert is_deterministic(0.0, None) and is_deterministic(0.7, 3)
    assert not is_deterministic(0.7, None)


def test_local_cache_evicts_the_least_recently_used():
    async def main():
        cache = ResponseCache(size=2)
        await cache.put("a", 1)
        await cache.put("b", 2)
        assert await cache.get("a") == (1, "local")
        await cache.put("c", 3)
        assert await cache.get("b") == (None, None) and await cache.get("a") == (1, "local")

    asyncio.run(main())


def test_an_unreachable_redis_degrades_to_the_local_cache():
    async def main():
        cache = ResponseCache(size=4, redis=RedisTier("redis://127.0.0.1:1/0"))
        await cache.put("k", {"text": "x"})  # no exception
        assert await cache.get("k") == ({"text": "x"}, "local")
        assert await cache.get("other") == (None, None)

    asyncio.run(main())


def test_redis_shares_entries_between_replicas():
    require_service("Redis", "127.0.0.1", 6379)
    url = "redis://127.0.0.1:6379/7"

    async def main():
        a, b = (ResponseCache(4, RedisTier(url), ttl_s=60) for _ in range(2))
        key = cache_key("1", "shared prompt", {"seed": 1})
        await a.put(key, {"text": "hello"})
        assert await b.get(key) == ({"text": "hello"}, "redis")
        assert await b.get(key) == ({"text": "hello"}, "local")  # now held locally too

    asyncio.run(main())


def test_the_breaker_opens_after_failures_and_lets_one_trial_through_after_the_pause():
    """A hung Redis costs `threshold` timeouts, then calls fail at once until the pause ends."""
    import socket

    async def main():
        with socket.socket() as hung:  # accepts connections (backlog), never answers
            hung.bind(("127.0.0.1", 0))
            hung.listen(16)
            tier = RedisTier(f"redis://127.0.0.1:{hung.getsockname()[1]}/0", timeout_s=0.1,
                             threshold=2, cooldown_s=0.5)
            times = []
            for _ in range(6):
                began = time.perf_counter()
                with pytest.raises(RedisUnavailable):
                    await tier.call(lambda r: r.get("k"))
                times.append(time.perf_counter() - began)
            assert tier.open
            assert all(t >= 0.09 for t in times[:2]) and all(t < 0.05 for t in times[2:])
            await asyncio.sleep(0.6)
            began = time.perf_counter()
            with pytest.raises(RedisUnavailable):
                await tier.call(lambda r: r.get("k"))  # the trial, which waits its timeout
            assert time.perf_counter() - began >= 0.09
            await tier.close()

    asyncio.run(main())


@pytest.mark.parametrize("weight", [0, 5, 50, 100])
def test_sticky_buckets_follow_the_weight_and_only_grow(weight):
    users = [f"user-{i}" for i in range(4000)]
    chosen = {u for u in users if in_canary(weight, u, draw=0.99)}
    assert abs(len(chosen) / len(users) - weight / 100) < 0.03
    if weight < 100:
        assert chosen <= {u for u in users if in_canary(weight + 10, u, draw=0.99)}
