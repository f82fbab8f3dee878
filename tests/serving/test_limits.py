"""Gateway limits per API key: requests per second and generated tokens per minute, in
this process or shared through Redis; 429 with Retry-After; visible in /metrics."""

from __future__ import annotations

import asyncio
import json
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.limits import REQUESTS, TOKENS, Limit, Limits, RateLimited, key_id, parse_limits
from serving.redis_tier import RedisTier
from tasks.errors import BadInput
from tests.conftest import require_service
from tests.serving.fixtures import new_keys, start_server


def _refused(limits: Limits, key: str) -> RateLimited | None:
    try:
        asyncio.run(limits.admit(key_id(key), (REQUESTS, TOKENS)))
    except RateLimited as exc:
        return exc
    return None


def test_requests_per_second_allow_a_seconds_burst_then_refuse_with_the_wait():
    limits = Limits(Limit(requests_per_s=2), {})
    assert [_refused(limits, "a") for _ in range(2)] == [None, None]
    third = _refused(limits, "a")
    assert third.kind == "requests_per_s" and 0.3 < third.retry_after_s <= 0.5
    assert _refused(limits, "b") is None  # every key has its own bucket


def test_tokens_are_charged_after_the_answer_and_a_long_one_makes_the_next_wait():
    limits = Limits(Limit(tokens_per_min=60), {key_id("a"): Limit(tokens_per_min=600)})
    assert _refused(limits, "a") is None and _refused(limits, "b") is None
    asyncio.run(limits.charge(key_id("b"), 100))  # 60 - 100: 41 tokens short of one
    refused = _refused(limits, "b")
    assert refused.kind == "tokens_per_min" and 40 < refused.retry_after_s <= 41
    asyncio.run(limits.charge(key_id("a"), 100))
    assert _refused(limits, "a") is None  # its own, larger limit


def test_replicas_share_buckets_through_redis():
    require_service("Redis", "127.0.0.1", 6379)
    import redis

    url = "redis://127.0.0.1:6379/8"
    redis.Redis.from_url(url).flushdb()
    key = secrets.token_hex(8)

    async def main():
        a, b = (Limits(Limit(requests_per_s=3), {}, RedisTier(url)) for _ in range(2))
        outcomes = []
        for limits in (a, b, a, b):
            try:
                await limits.admit(key_id(key), (REQUESTS,))
                outcomes.append("ok")
            except RateLimited:
                outcomes.append("429")
        return outcomes

    assert asyncio.run(main()) == ["ok", "ok", "ok", "429"]


@pytest.mark.parametrize(("raw", "words"), [
    ("{", "not JSON"),
    ("[]", "must be an object"),
    ('{"k-1": {"requests_per_s": -1}}', "AIGC_KEY_LIMITS.k-1.requests_per_s"),
    ('{"k-1": {"requests_per_s": true}}', "AIGC_KEY_LIMITS.k-1.requests_per_s"),
    ('{"k-1": {"rps": 1}}', "AIGC_KEY_LIMITS.k-1"),
])
def test_bad_key_limits_are_named(raw, words):
    with pytest.raises(BadInput, match=words.replace(".", r"\.")):
        parse_limits(Limit(), raw)


@pytest.fixture(scope="module")
def limited(registry, tmp_path_factory):
    slow, free = secrets.token_hex(8), secrets.token_hex(8)
    keys = new_keys() | {"AIGC_API_KEYS": f"{slow},{free}"}
    for server in start_server(registry, tmp_path_factory.mktemp("limited"), keys,
                               AIGC_KEY_LIMITS=json.dumps({key_id(slow): {"requests_per_s": 2}})):
        yield server, slow, free


def test_a_key_over_its_limit_gets_429_with_retry_after_and_others_do_not(limited):
    server, slow, free = limited

    def ask(key: str) -> requests.Response:
        return requests.post(f"{server.url}/v1/chat/completions", timeout=60,
                             headers={"Authorization": f"Bearer {key}"},
                             json={"messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 1})

    with ThreadPoolExecutor(6) as pool:
        burst = list(pool.map(ask, [slow] * 6))
    codes = sorted(r.status_code for r in burst)
    assert codes[:2] == [200, 200] and 429 in codes, codes
    refused = next(r for r in burst if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and key_id(slow) in error["message"]
    assert slow not in refused.text
    assert [ask(free).status_code for _ in range(6)] == [200] * 6
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert f'aigc_rate_limit{{key_id="{key_id(slow)}",limit="requests_per_s"}} 2.0' in metrics
    assert f'aigc_rate_limited_requests_total{{key_id="{key_id(slow)}",' in metrics
    assert slow not in metrics and free not in metrics
