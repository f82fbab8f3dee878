"""The model server as a real process on loopback: generate, validation, auth, routing,
feedback, batching, cache, jobs, metrics and alias moves."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serving.fixtures import Server

PROMPT = "how are you?"


def _gen(server: Server, **body) -> requests.Response:
    return requests.post(f"{server.url}/v1/generate", headers=server.headers(), timeout=60,
                         json={"prompt": PROMPT, "max_new_tokens": 4} | body)


def _rows(server: Server, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(server.feedback_db) as db:
        return db.execute(sql, params).fetchall()


def _set_weight(server: Server, version: str, weight: int) -> requests.Response:
    return requests.put(f"{server.url}/admin/canary", headers=server.headers(admin=True),
                        json={"version": version, "weight": weight}, timeout=30)


def test_generate_names_the_version_and_logs_the_request(server, registry):
    reply = _gen(server, seed=1)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    champion = registry.versions["champion"]
    assert body["model_version"] == reply.headers["X-Model-Version"] == champion
    assert body["route"] == "champion" and isinstance(body["text"], str)
    assert 1 <= body["tokens"] <= 4  # max_new_tokens bounds what is generated
    assert _gen(server, seed=1, max_new_tokens=1).json()["tokens"] == 1
    assert _rows(server, "SELECT model_version, status, tokens FROM requests WHERE "
                 "request_id = ?", body["request_id"]) == [(champion, "ok", body["tokens"])]


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 100_000}, "max_new_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"seed": -1}, "seed"),
    ({"max_new_tokens": "8"}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"tempreature": 0.5}, "tempreature"),
])
def test_bad_generate_requests_get_422_naming_the_field(server, body, field):
    reply = _gen(server, **body)
    assert reply.status_code == 422
    assert field in [d["loc"][-1] for d in reply.json()["detail"]], reply.text


@pytest.mark.parametrize(("headers", "status", "words"), [
    ({}, 401, "missing API key"),
    ({"Authorization": "Bearer wrong"}, 401, "invalid API key"),
    ({"X-API-Key": "wrong"}, 401, "invalid API key"),
])
def test_missing_or_wrong_keys_are_refused(server, headers, status, words):
    reply = requests.post(f"{server.url}/v1/generate", json={"prompt": PROMPT},
                          headers=headers, timeout=30)
    assert reply.status_code == status and words in reply.json()["detail"]


def test_admin_endpoints_need_the_admin_key(server, registry):
    reply = requests.put(f"{server.url}/admin/canary", headers=server.headers(),
                         json={"version": registry.versions["healthy"], "weight": 50},
                         timeout=30)
    assert reply.status_code == 403 and "admin key" in reply.json()["detail"]
    assert _set_weight(server, "999", 50).status_code == 409  # not the served challenger
    assert _set_weight(server, registry.versions["healthy"], 101).status_code == 422


def test_the_latency_sample_is_numbered_per_version_and_needs_the_admin_key(server):
    url = f"{server.url}/admin/latencies"
    assert requests.get(url, headers=server.headers(), timeout=30).status_code == 403
    before = requests.get(url, headers=server.headers(admin=True), timeout=30).json()
    version = _gen(server).headers["x-model-version"]
    after = requests.get(url, headers=server.headers(admin=True), timeout=30).json()
    old = {seq for seq, _ in before["versions"].get(version, [])}
    new = [(seq, s) for seq, s in after["versions"][version] if seq not in old]
    assert len(new) == 1 and new[0][0] > max(old, default=-1) and new[0][1] > 0


def test_the_user_id_is_stored_as_a_keyed_hash(server):
    from tasks.feedback.identity import user_ref

    reply = _gen(server, user="alice@example.com")
    rows = _rows(server, "SELECT user_id FROM requests WHERE request_id = ?",
                 reply.json()["request_id"])
    assert rows == [(user_ref("alice@example.com", server.user_hash_key.encode()),)]
    assert not _rows(server, "SELECT 1 FROM requests WHERE user_id LIKE '%alice%'")


def test_an_erasure_over_the_admin_api_deletes_the_users_rows(server):
    from tasks.feedback.identity import user_ref

    served = [_gen(server, user="carol@example.com").json()["request_id"] for _ in range(2)]
    other = _gen(server, user="dave").json()["request_id"]
    url = f"{server.url}/admin/erasure"
    body = {"user": "carol@example.com"}
    assert requests.post(url, headers=server.headers(), json=body, timeout=30
                         ).status_code == 403
    done = requests.post(url, headers=server.headers(admin=True), json=body, timeout=60)
    assert done.status_code == 200, done.text
    assert done.json()["requests_deleted"] == 2 and "carol" not in done.text
    ref = user_ref("carol@example.com", server.user_hash_key.encode())
    assert not _rows(server, "SELECT 1 FROM requests WHERE user_id = ?", ref)
    assert not _rows(server, f"SELECT 1 FROM requests WHERE request_id IN ('{served[0]}', "
                             f"'{served[1]}')")
    assert _rows(server, "SELECT 1 FROM requests WHERE request_id = ?", other)
    assert requests.post(url, headers=server.headers(admin=True), json={"user": ""},
                         timeout=30).status_code == 422


def test_feedback_posted_concurrently_is_stored_exactly_once_each(server):
    # Ten posts a request: the most one request takes.
    served = [_gen(server).json()["request_id"] for _ in range(6)]
    posts = [{"request_id": served[i % 6], "thumbs": "up" if i % 3 else "down",
              "feedback_id": f"fb-{uuid.uuid4().hex}"} for i in range(60)]

    def post(body):
        return requests.post(f"{server.url}/v1/feedback", headers=server.headers(),
                             json=body, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(post, posts + posts[:10]))  # ten retried posts
    assert [r.status_code for r in replies[:60]] == [201] * 60
    assert [r.status_code for r in replies[60:]] == [200] * 10
    ids = [p["feedback_id"] for p in posts]
    stored = _rows(server, f"SELECT feedback_id, positive FROM feedback WHERE feedback_id IN "
                   f"({','.join('?' * len(ids))})", *ids)
    assert sorted(f for f, _ in stored) == sorted(ids)
    assert sum(p for _, p in stored) == sum(p["thumbs"] == "up" for p in posts)


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"request_id": "nope", "thumbs": "up"}, 404, "request_id"),
    ({"request_id": "x", "thumbs": "up", "rating": 5}, 422, "exactly one"),
    ({"request_id": "x"}, 422, "exactly one"),
    ({"request_id": "x", "rating": 6}, 422, "rating"),
])
def test_bad_feedback_is_refused_with_the_reason(server, body, status, words):
    reply = requests.post(f"{server.url}/v1/feedback", headers=server.headers(), json=body,
                          timeout=30)
    assert reply.status_code == status and words in reply.text


def test_feedback_id_reused_for_another_request_conflicts(server):
    a, b = (_gen(server).json()["request_id"] for _ in range(2))
    body = {"thumbs": "up", "feedback_id": "same-id"}
    ok = requests.post(f"{server.url}/v1/feedback", headers=server.headers(),
                       json=body | {"request_id": a}, timeout=30)
    clash = requests.post(f"{server.url}/v1/feedback", headers=server.headers(),
                          json=body | {"request_id": b}, timeout=30)
    assert ok.status_code == 201 and clash.status_code == 409


def test_weighted_routing_keeps_users_sticky_and_the_share_near_the_weight(server, registry):
    healthy = registry.versions["healthy"]
    assert _set_weight(server, healthy, 30).json()["weight"] == 30
    try:
        with ThreadPoolExecutor(8) as pool:
            served = list(pool.map(lambda i: _gen(server, user=f"u{i}", max_new_tokens=1)
                                   .json()["model_version"], range(300)))
        share = Counter(served)[healthy] / len(served)
        assert 0.2 < share < 0.4  # 30 % +- 4 standard deviations of 300 draws
        again = {_gen(server, user="u7", max_new_tokens=1).json()["model_version"]
                 for _ in range(10)}
        assert again == {served[7]}
    finally:
        _set_weight(server, healthy, 0)
    assert {_gen(server, max_new_tokens=1).json()["model_version"] for _ in range(20)} == {
        registry.versions["champion"]}


def test_deterministic_requests_are_cached_per_version(server):
    first, second = _gen(server, seed=5).json(), _gen(server, seed=5).json()
    assert not first["cached"] and second["cached"]
    assert first["text"] == second["text"]
    spaced = _gen(server, seed=5, prompt="  how   are you? ").json()
    assert spaced["cached"]  # the same prompt after normalising whitespace
    unseeded = [_gen(server).json()["cached"] for _ in range(2)]
    assert unseeded == [False, False]  # random sampling is never served from the cache


def test_concurrent_requests_are_batched(server):
    def metric(name: str) -> float:
        text = requests.get(f"{server.url}/metrics", timeout=30).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(name))

    before_sum, before_count = metric("aigc_batch_size_sum"), metric("aigc_batch_size_count")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: _gen(server, max_new_tokens=8).status_code,
                                range(48)))
    assert replies == [200] * 48
    rows = metric("aigc_batch_size_sum") - before_sum
    steps = metric("aigc_batch_size_count") - before_count
    # Each decode step carries the sequences in flight: with 16 clients, many per step.
    assert steps > 0 and rows / steps >= 4, (rows, steps)


def test_async_job_runs_to_completion(server):
    reply = requests.post(f"{server.url}/v1/jobs", headers=server.headers(), timeout=30,
                          json={"prompt": PROMPT, "max_new_tokens": 80, "seed": 3})
    assert reply.status_code == 202
    job = reply.json()
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = requests.get(f"{server.url}/v1/jobs/{job['job_id']}", headers=server.headers(),
                           timeout=30).json()
    assert job["status"] == "done", job
    assert job["result"]["model_version"] and job["result"]["tokens"] >= 1
    missing = requests.get(f"{server.url}/v1/jobs/unknown", headers=server.headers(),
                           timeout=30)
    assert missing.status_code == 404


def test_health_metrics_and_openapi(server):
    assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    for family in ("aigc_requests_total", "aigc_request_errors_total",
                   "aigc_request_latency_seconds_bucket", "aigc_batch_size_bucket",
                   "aigc_generated_tokens_total", "aigc_cache_lookups_total",
                   "aigc_feedback_total", "aigc_canary_weight_percent", "aigc_model_serving"):
        assert family in metrics, family
    paths = requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/generate", "/v1/feedback", "/v1/jobs", "/v1/jobs/{job_id}", "/healthz",
            "/readyz", "/metrics", "/admin/canary", "/admin/reload"} <= set(paths)


def test_an_alias_move_is_followed_without_a_restart(server, registry):
    v = registry.versions
    registry.point(v["healthy"], v["healthy"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _gen(server).json()["model_version"] != v["healthy"]:
            time.sleep(0.2)
        assert _gen(server).json()["model_version"] == v["healthy"]
        state = requests.get(f"{server.url}/admin/canary", headers=server.headers(admin=True),
                             timeout=10).json()
        assert state == {"champion": v["healthy"], "challenger": None, "weight": 0,
                         "errors": []}
    finally:
        registry.point(v["champion"], v["healthy"])
        requests.post(f"{server.url}/admin/reload", headers=server.headers(admin=True),
                      timeout=60)
