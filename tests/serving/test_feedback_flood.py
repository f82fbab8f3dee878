"""Feedback under a flood: 10 clients × 2,000 posts over reused connections, every post
acknowledged and stored once; repeated feedback on one request counts once for a rollout
and stops at the per-request limit."""

from __future__ import annotations

import sqlite3
import threading
import uuid

import pytest
import requests

from tests.serving.fixtures import Server, start_server

CLIENTS, POSTS = 10, 2000


@pytest.fixture(scope="module")
def flooded(registry, tmp_path_factory):
    yield from start_server(registry, tmp_path_factory.mktemp("flood"),
                            AIGC_MAX_FEEDBACK_PER_REQUEST=str(POSTS))


def _served(server: Server) -> str:
    return requests.post(f"{server.url}/v1/generate", headers=server.headers(), timeout=60,
                         json={"prompt": "hi", "max_new_tokens": 1}).json()["request_id"]


def _feedback_metric(server: Server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("aigc_feedback_total{"))


def test_a_flood_over_reused_connections_is_acknowledged_and_stored_in_full(flooded):
    server = flooded
    requests_ids = [_served(server) for _ in range(CLIENTS)]
    before = _feedback_metric(server)
    sent: list[list[str]] = [[] for _ in range(CLIENTS)]
    failures: list[str] = []

    def client(i: int) -> None:
        with requests.Session() as session:  # one connection, reused for every post
            for _ in range(POSTS):
                fid = uuid.uuid4().hex
                try:
                    reply = session.post(f"{server.url}/v1/feedback", timeout=60,
                                         headers=server.headers(),
                                         json={"request_id": requests_ids[i], "feedback_id": fid,
                                               "thumbs": "down"})
                except requests.RequestException as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if reply.status_code != 201:
                    failures.append(f"{reply.status_code}: {reply.text[:200]}")
                sent[i].append(fid)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with sqlite3.connect(server.feedback_db) as db:
        stored = {row[0] for row in db.execute("SELECT feedback_id FROM feedback")}
    assert {fid for posts in sent for fid in posts} <= stored
    assert sum(len(posts) for posts in sent) == CLIENTS * POSTS
    # Each request's 2,000 thumbs-down count once in what the canary reads.
    assert _feedback_metric(server) - before == CLIENTS


def test_feedback_on_one_request_stops_at_the_limit(server):
    rid = _served(server)

    def post() -> requests.Response:
        return requests.post(f"{server.url}/v1/feedback", headers=server.headers(), timeout=30,
                             json={"request_id": rid, "thumbs": "up"})

    codes = [post().status_code for _ in range(11)]
    assert codes == [201] * 10 + [409]
    assert "the limit is 10" in post().json()["detail"]
