"""Two server replicas sharing Redis: a cached answer and queued jobs cross between them."""

from __future__ import annotations

import contextlib
import time

import pytest
import requests

from tests.conftest import require_service
from tests.serving.fixtures import new_keys, start_server

REDIS = "redis://127.0.0.1:6379/6"


@pytest.fixture(scope="module")
def replicas(registry, tmp_path_factory):
    require_service("Redis", "127.0.0.1", 6379)
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    keys = new_keys()
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(contextlib.contextmanager(start_server)(
            registry, tmp_path_factory.mktemp(f"replica{i}"), keys, AIGC_REDIS_URL=REDIS))
            for i in range(2)]
        yield servers


def test_an_answer_cached_by_one_replica_is_served_by_the_other(replicas):
    a, b = replicas
    body = {"prompt": "tell me a joke", "max_new_tokens": 6, "temperature": 0}
    first = requests.post(f"{a.url}/v1/generate", headers=a.headers(), json=body, timeout=60)
    second = requests.post(f"{b.url}/v1/generate", headers=b.headers(), json=body, timeout=60)
    assert not first.json()["cached"] and second.json()["cached"]
    assert first.json()["text"] == second.json()["text"]
    metrics = requests.get(f"{b.url}/metrics", timeout=10).text
    assert 'aigc_cache_lookups_total{result="redis"} 1.0' in metrics


def test_jobs_queued_on_one_replica_are_visible_from_both(replicas):
    a, b = replicas
    ids = [requests.post(f"{a.url}/v1/jobs", headers=a.headers(), timeout=30,
                         json={"prompt": f"job {i}", "max_new_tokens": 20, "seed": i}
                         ).json()["job_id"] for i in range(6)]
    deadline, done = time.monotonic() + 90, {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        for job_id in set(ids) - set(done):
            job = requests.get(f"{b.url}/v1/jobs/{job_id}", headers=b.headers(),
                               timeout=30).json()
            if job["status"] in ("done", "failed"):
                done[job_id] = job
        time.sleep(0.3)
    assert sorted(done) == sorted(ids)
    assert {j["status"] for j in done.values()} == {"done"}
    assert all(j["result"]["tokens"] >= 1 for j in done.values())
