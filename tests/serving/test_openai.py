"""The OpenAI-compatible API on a real server process: the `openai` package as the client
(plain and streaming), the raw event stream over httpx, canary routing and feedback on chat
answers, a client leaving mid-stream, and bad requests in OpenAI's error shape."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import requests

from tests.serving.fixtures import Server

CHAT = [{"role": "user", "content": "how are you?"}]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


def _rows(server: Server, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(server.feedback_db) as db:
        return db.execute(sql, params).fetchall()


def _metric(server: Server, name: str, **labels: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and all(w in line for w in want))


def test_chat_completion_answers_as_openai_and_names_the_request_and_version(
        server, registry, client):
    name, champion = registry.name, registry.versions["champion"]
    reply = client.chat.completions.with_raw_response.create(
        model=name, messages=CHAT, max_tokens=6, temperature=0, seed=1)
    answer = reply.parse()
    assert reply.headers["x-request-id"] == answer.id
    assert reply.headers["x-model-version"] == champion and answer.model == f"{name}@{champion}"
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= answer.usage.completion_tokens <= 6 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert _rows(server, "SELECT model_version, prompt, response, status FROM requests WHERE "
                 "request_id = ?", answer.id) == [(champion, "how are you?",
                                                   choice.message.content, "ok")]
    feedback = requests.post(f"{server.url}/v1/feedback", headers=server.headers(), timeout=30,
                             json={"request_id": answer.id, "thumbs": "down"})
    assert feedback.status_code == 201 and feedback.json()["model_version"] == champion


def test_streamed_chat_adds_up_to_the_whole_answer_with_usage_last(registry, client):
    args = {"model": registry.name, "messages": CHAT, "max_tokens": 24, "temperature": 0, "seed": 2}
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **args))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length") and last.usage is not None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    with_usage = list(client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **args))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens >= 1


def test_completion_event_stream_read_with_plain_httpx(server, registry, client):
    body = {"model": registry.name, "prompt": "how are", "max_tokens": 12, "temperature": 0,
            "stream": True}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60,
                      headers=server.headers()) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    whole = client.completions.create(**{k: v for k, v in body.items() if k != "stream"})
    assert streamed == whole.choices[0].text
    assert chunks[-1]["usage"]["completion_tokens"] == whole.usage.completion_tokens


def test_models_lists_the_routed_name_aliases_and_versions(registry, client):
    ids = {m.id for m in client.models.list()}
    v = registry.versions
    assert {registry.name, f"{registry.name}@champion", f"{registry.name}@{v['champion']}",
            f"{registry.name}@challenger", f"{registry.name}@{v['healthy']}"} <= ids


def _set_weight(server: Server, version: str, weight: int) -> None:
    reply = requests.put(f"{server.url}/admin/canary", headers=server.headers(admin=True),
                         json={"version": version, "weight": weight}, timeout=30)
    assert reply.status_code == 200, reply.text


def test_the_canary_splits_openai_traffic_by_weight_and_pins_on_request(
        server, registry, client):
    healthy = registry.versions["healthy"]
    _set_weight(server, healthy, 30)
    try:
        def ask(i: int) -> str:
            return client.chat.completions.create(model=registry.name, messages=CHAT,
                                                  max_tokens=1,
                                                  user=f"user-{i}").model

        with ThreadPoolExecutor(8) as pool:
            served = list(pool.map(ask, range(300)))
        share = Counter(served)[f"{registry.name}@{healthy}"] / len(served)
        assert 0.2 < share < 0.4  # 30 % +- 4 standard deviations of 300 draws
    finally:
        _set_weight(server, healthy, 0)
    pinned = client.chat.completions.create(model=f"{registry.name}@challenger",
                                            messages=CHAT, max_tokens=1)
    assert pinned.model == f"{registry.name}@{healthy}"  # pinned even at weight 0


def test_a_client_leaving_mid_stream_frees_its_slot(server, registry, client):
    """A slow version (50 ms a step) would take 10 s for this answer; the client reads one
    chunk and leaves: the sequence leaves the running batch within a step or two."""
    v = registry.versions
    registry.point(v["champion"], v["slow"])
    requests.post(f"{server.url}/admin/reload", headers=server.headers(admin=True), timeout=60)
    try:
        cancelled = _metric(server, "aigc_cancelled_requests_total", version=v["slow"])
        stream = client.chat.completions.create(model=f"{registry.name}@challenger",
                                                messages=CHAT, max_tokens=200, stream=True)
        first = next(iter(stream))
        assert _metric(server, "aigc_active_sequences", version=v["slow"]) == 1
        stream.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _metric(
                server, "aigc_active_sequences", version=v["slow"]) != 0:
            time.sleep(0.05)
        assert _metric(server, "aigc_active_sequences", version=v["slow"]) == 0
        assert _metric(server, "aigc_cancelled_requests_total",
                       version=v["slow"]) == cancelled + 1
        time.sleep(0.5)  # the record of a request whose client left is written afterwards
        [(status, error)] = _rows(server, "SELECT status, error FROM requests WHERE "
                                  "request_id = ?", first.id)
        assert status == "error" and error.startswith("cancelled")
    finally:
        registry.point(v["champion"], v["healthy"])
        requests.post(f"{server.url}/admin/reload", headers=server.headers(admin=True),
                      timeout=60)


def _post(server: Server, path: str, body: bytes | dict, headers: dict | None = None,
          ) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}{path}", data=data, timeout=60,
                         headers=(server.headers() if headers is None else headers)
                         | {"Content-Type": "application/json"})


GOOD = {"messages": CHAT, "max_tokens": 4}


@pytest.mark.parametrize(("body", "status", "words"), [
    (GOOD | {"temprature": 0.5}, 422, "temprature"),
    (GOOD | {"n": 2}, 422, "n: "),
    (GOOD | {"max_tokens": -1}, 422, "max_tokens"),
    (GOOD | {"max_tokens": "8"}, 422, "max_tokens"),
    (GOOD | {"max_tokens": True}, 422, "max_tokens"),
    (GOOD | {"frequency_penalty": 0.5}, 422, "only 0.0"),
    (GOOD | {"model": "gpt-4"}, 404, "gpt-4"),
    ({"messages": [{"role": "user", "content": "x" * 2001}]}, 422, "AIGC_MAX_PROMPT_CHARS"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 422, "role"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "NaN"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', 400,
     "too large"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "surrogate"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "UTF-8"),
    (b'{"messages": [', 400, "JSON"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', 413,
     "AIGC_MAX_BODY_BYTES"),
])
def test_bad_requests_get_4xx_in_openai_error_shape(server, body, status, words):
    reply = _post(server, "/v1/chat/completions", body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] + str(error["param"]), error
    assert set(error) == {"message", "type", "param", "code"}
    assert len(reply.content) < 2000  # nothing of a large input is echoed
    assert _post(server, "/v1/chat/completions", GOOD).status_code == 200  # server fine


def test_the_key_is_checked_before_the_body_is_read(server):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}'
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = _post(server, "/v1/chat/completions", big, headers)
        assert reply.status_code == 401 and "API key" in reply.json()["error"]["message"]
    assert _post(server, "/v1/generate", b"{not json", {}).status_code == 401


@pytest.mark.parametrize("body", [
    b'{"prompt": "hi", "temperature": Infinity}',
    b'{"prompt": "\\udfff"}',
    json.dumps({"prompt": "x" * 100_000}).encode(),
])
def test_native_generate_refuses_what_json_cannot_carry_without_echoing_it(server, body):
    reply = _post(server, "/v1/generate", body)
    assert reply.status_code in (400, 422), reply.text
    assert len(reply.content) < 2000
    assert not re.search(r"x{100}", reply.text)
